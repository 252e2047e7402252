"""A small training loop for embedders, with metric-learning and contrastive drivers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import random_views
from .losses import batch_hard_triplet_loss, info_nce_loss

LossFn = Callable[[nn.Module, torch.Generator], Tensor]
ExtraLossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


@dataclass
class FitResult:
    """What a training run did: per-step losses and wall-clock seconds."""

    losses: List[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    steps: int,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
    desc: str = "training",
) -> FitResult:
    r"""Trains ``model`` for ``steps`` AdamW steps with a cosine learning-rate decay.

    Args:
        model (nn.Module): The embedder; trained in place, returned to eval
            mode with no ``.grad`` left on its parameters.
        loss_fn (Callable): ``loss_fn(model, generator)`` draws a batch with
            ``generator`` and returns the scalar loss. Extra terms (e.g. an
            attention constraint) go inside it.
        steps (int): Optimisation steps.
        lr (float, optional): Peak learning rate.
            Default: 2e-3
        weight_decay (float, optional): AdamW weight decay.
            Default: 1e-4
        seed (int, optional): Seeds the batch generator and ``torch``'s RNG.
            Default: 0
        progress (bool, optional): Show a progress bar.
            Default: False
        desc (str, optional): Progress bar label.
            Default: ``"training"``

    Returns:
        FitResult: losses and duration.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    result = FitResult()
    start = time.perf_counter()
    model.train()
    try:
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
        for _ in bar:
            loss = loss_fn(model, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            result.losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", refresh=False)
    finally:
        model.eval()
        for p in params:
            p.grad = None
    result.seconds = time.perf_counter() - start
    return result


def pk_batch(labels: Tensor, identities: int, per_identity: int, generator: torch.Generator) -> Tensor:
    """Indices of a batch with ``identities`` random labels x ``per_identity`` images each."""
    ids = torch.unique(labels)
    chosen = ids[torch.randperm(len(ids), generator=generator)[:identities]]
    picks = []
    for label in chosen.tolist():
        members = torch.nonzero(labels == label).flatten()
        order = torch.randperm(len(members), generator=generator)
        picks.append(members[order.repeat(per_identity // len(members) + 1)[:per_identity]])
    return torch.cat(picks)


def fit_metric(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    steps: int = 600,
    identities_per_batch: int = 8,
    images_per_identity: int = 4,
    margin: float = 0.2,
    augment: bool = True,
    extra_loss: Optional[ExtraLossFn] = None,
    **fit_kwargs: object,
) -> FitResult:
    r"""Metric learning on labelled images with batch-hard triplet loss.

    Each step draws ``identities_per_batch`` identities with
    ``images_per_identity`` images each, optionally makes random views of them
    (:func:`~captum_similarity.training.random_views`), and minimises
    :func:`~captum_similarity.training.batch_hard_triplet_loss`.

    Args:
        model (nn.Module): The embedder.
        images (Tensor): ``(M, C, H, W)`` in [0, 1].
        labels (Tensor): ``(M,)`` identities.
        steps (int, optional): Optimisation steps.
            Default: 600
        identities_per_batch (int, optional): ``P`` of the P x K batch.
            Default: 8
        images_per_identity (int, optional): ``K`` of the P x K batch.
            Default: 4
        margin (float, optional): Triplet margin.
            Default: 0.2
        augment (bool, optional): Train on random views.
            Default: True
        extra_loss (Callable, optional): ``extra_loss(model, batch, labels,
            embeddings)`` returns a scalar added to the triplet loss at each
            step (e.g. an attention constraint on the batch's triplets, see
            :class:`~captum_similarity.training.SimilarityAttentionLoss`).
            Default: None
        **fit_kwargs: Passed to :func:`fit` (``lr``, ``seed``, ``progress``...).

    Returns:
        FitResult: losses and duration.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")

    def loss_fn(net: nn.Module, generator: torch.Generator) -> Tensor:
        idx = pk_batch(labels, identities_per_batch, images_per_identity, generator)
        batch = images[idx]
        if augment:
            batch = random_views(batch, generator)
        z = net(batch)
        loss = batch_hard_triplet_loss(z, labels[idx], margin)
        if extra_loss is not None:
            loss = loss + extra_loss(net, batch, labels[idx], z)
        return loss

    return fit(model, loss_fn, steps, **fit_kwargs)  # type: ignore[arg-type]


def fit_contrastive(
    model: nn.Module,
    sample: Callable[[torch.Generator], Tensor],
    steps: int = 400,
    temperature: float = 0.1,
    **fit_kwargs: object,
) -> FitResult:
    r"""Self-supervised contrastive training: two random views of each sample match.

    Args:
        model (nn.Module): The embedder.
        sample (Callable): ``sample(generator)`` returns a batch ``(B, C, H, W)``
            of distinct images in [0, 1].
        steps (int, optional): Optimisation steps.
            Default: 400
        temperature (float, optional): InfoNCE temperature.
            Default: 0.1
        **fit_kwargs: Passed to :func:`fit`.

    Returns:
        FitResult: losses and duration.
    """

    def loss_fn(net: nn.Module, generator: torch.Generator) -> Tensor:
        batch = sample(generator)
        views = random_views(torch.cat([batch, batch]), generator)
        z = net(views)
        return info_nce_loss(z[: len(batch)], z[len(batch) :], temperature)

    return fit(model, loss_fn, steps, **fit_kwargs)  # type: ignore[arg-type]
