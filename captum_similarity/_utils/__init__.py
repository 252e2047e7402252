"""Internal helpers shared by every method: input checks, hooks, model state, batching."""
