"""Shared fixtures: reference models, inputs, the ORL data path, model snapshots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from torch import nn

from captum_similarity.models import EfficientNetEmbedder, ResNetEmbedder, SimpleCNN, ViTEmbedder

ORL_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"


def _init_batchnorm_stats(model: nn.Module, seed: int) -> nn.Module:
    """Gives BatchNorm layers non-trivial running statistics and affine terms."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def make_reference_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A reference embedder in eval mode, deterministic for a seed, for 32x32 RGB input."""
    torch.manual_seed(seed)
    factories: Dict[str, Callable[[], nn.Module]] = {
        "cnn": lambda: SimpleCNN(),
        "cnn_nobias": lambda: SimpleCNN(bias=False),
        "resnet": lambda: ResNetEmbedder(),
        "efficientnet": lambda: EfficientNetEmbedder(),
        "vit": lambda: ViTEmbedder(image_size=32, patch_size=8),
    }
    model = _init_batchnorm_stats(factories[kind](), seed)
    return model.to(dtype).eval()


REFERENCE_KINDS = ["cnn", "resnet", "efficientnet", "vit"]


def local_seeds(activation: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` relevance seeds ``(count, N, C, h, w)``, each one random cell
    (all channels of ``activation``) per image."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = activation.shape
    seeds = torch.zeros((count, *activation.shape), dtype=activation.dtype)
    for k in range(count):
        for r in range(n):
            i, j = (int(torch.randint(0, s, (1,), generator=g)) for s in (h, w))
            seeds[k, r, :, i, j] = activation[r, :, i, j]
    return seeds


def zero_additive_constants(model: nn.Module) -> nn.Module:
    """Zeroes biases, BatchNorm means and the ViT's class/position tokens, so
    that nothing but the input can absorb relevance (LRP conserves exactly)."""
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
        for name in ("cls_token", "pos_embed"):
            if hasattr(model, name):
                getattr(model, name).zero_()
    return model


@pytest.fixture(params=REFERENCE_KINDS)
def reference_model(request) -> nn.Module:
    return make_reference_model(request.param)


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    def make(n: int = 2, seed: int = 0, size: int = 32, channels: int = 3) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, channels, size, size, generator=g, dtype=torch.float64)

    return make


def snapshot(model: nn.Module) -> dict:
    """Everything about a model that a method must leave unchanged."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grad": [(n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
        "hooks": [
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()
        ],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for (n, g0), (_, g1) in zip(before["grad"], after["grad"]):
        assert (g0 is None) == (g1 is None), n
        if g0 is not None:
            assert torch.equal(g0, g1), n
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


@pytest.fixture
def orl_root() -> Path:
    """The ORL faces folder (env CAPTUM_SIMILARITY_ORL overrides); skips when absent."""
    root = Path(os.environ.get("CAPTUM_SIMILARITY_ORL", ORL_DEFAULT))
    if not (root / "s1").is_dir():
        pytest.skip(f"ORL faces not found at {root} (set CAPTUM_SIMILARITY_ORL)")
    return root
