"""Small embedders trained here, on first use, and cached.

Nothing is downloaded: the demo embedder trains on images bundled with
scikit-image, the ORL embedder on the ORL faces from a path the caller gives.
Each trained model is cached under :func:`cache_dir` in a file named after a
hash of its training configuration, so changing the configuration retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.orl import identity_split, load_orl_faces
from ..data.samples import bundled_images, resize_crop, stereo_crops, stereo_pair
from ..metrics.retrieval import retrieval_metrics
from ..models.cnn import SimpleCNN
from ..models.resnet import ResNetEmbedder
from .augment import random_views
from .fit import ExtraLossFn, FitResult, fit_contrastive, fit_metric

#: Training configuration of :func:`demo_embedder`.
DEMO_CONFIG: Dict[str, Any] = {
    "arch": "SimpleCNN", "widths": [16, 32, 64], "embedding_dim": 64, "size": 48,
    "batch": 64, "crop": [64, 224], "steps": 200, "lr": 2e-3, "temperature": 0.1, "seed": 0,
    "evaluation": "stereo views v2",
}

#: Training configuration of :func:`orl_embedder`.
ORL_CONFIG: Dict[str, Any] = {
    "arch": "ResNetEmbedder", "widths": [16, 32, 64], "embedding_dim": 64, "size": [56, 46],
    "n_train": 30, "steps": 600, "identities_per_batch": 8, "images_per_identity": 4,
    "margin": 0.2, "lr": 2e-3, "seed": 0,
}


def cache_dir() -> Path:
    """Where trained models are cached: ``$CAPTUM_SIMILARITY_CACHE`` or
    ``~/.cache/captum_similarity``."""
    return Path(os.environ.get("CAPTUM_SIMILARITY_CACHE", Path.home() / ".cache" / "captum_similarity"))


def _cached(
    name: str,
    config: Dict[str, Any],
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Dict[str, Any]],
    cache: bool,
) -> Tuple[nn.Module, Dict[str, Any]]:
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{key}.pt"
    model = build()
    info = None
    if cache and path.is_file():
        info = _load_cached(model, path)
        if info is None:
            model = build()  # the failed load may have written some weights
    if info is not None:
        info["loaded_from_cache"] = True
    else:
        info = train(model)
        info["config"] = config
        info["loaded_from_cache"] = False
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": model.state_dict(), "info": json.dumps(info)}, path)
    info["cache_file"] = str(path) if cache else None
    return model.eval(), info


def _load_cached(model: nn.Module, path: Path) -> Optional[Dict[str, Any]]:
    """The cached model's training record, its weights loaded into ``model``;
    None (with a warning) when the file cannot be read as one: it is then
    trained again and the file rewritten."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return json.loads(saved["info"])
    except Exception as error:  # any damage: truncated, not a checkpoint, other keys
        first_line = (str(error).splitlines() or [""])[0][:160]
        warnings.warn(
            f"the cached model {path} cannot be read ({type(error).__name__}: {first_line}); "
            "training it again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _crop_sampler(images: Tuple[Tensor, ...], config: Dict[str, Any]) -> Callable[[torch.Generator], Tensor]:
    lo, hi = config["crop"]
    size = (config["size"], config["size"])

    def sample(generator: torch.Generator) -> Tensor:
        crops = []
        for _ in range(config["batch"]):
            img = images[int(torch.randint(len(images), (1,), generator=generator))]
            h, w = img.shape[1:]
            side = int(torch.randint(lo, min(hi, h, w) + 1, (1,), generator=generator))
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
            crops.append(resize_crop(img, top, left, side, side, size))
        return torch.stack(crops)

    return sample


def demo_embedder(
    cache: bool = True, progress: bool = False, steps: Optional[int] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
    r"""A small CNN trained self-supervised on scikit-image's bundled images.

    Training (``DEMO_CONFIG``): random square crops of 17 bundled images and
    of the *left* view of the stereo motorcycle pair, resized to 48x48; two
    random views of each crop (affine warp, brightness/contrast) must match
    under InfoNCE. The *right* stereo view is never seen, and is used to
    measure what the model learned (:func:`stereo_top1`): for 50 left-view
    crops, how often the most similar of 50 right-view crops, each under a
    random view (warp, brightness, contrast), is the corresponding one
    (``stereo_top1``; chance is 0.02; ``stereo_top1_untrained`` is the same
    network at its random initialisation, the baseline to beat).

    Args:
        cache (bool, optional): Load from / save to :func:`cache_dir`.
            Default: True
        progress (bool, optional): Show a progress bar while training.
            Default: False
        steps (int, optional): Override the number of training steps (a
            different configuration, cached separately).
            Default: None

    Returns:
        tuple: the embedder in eval mode (``(N, 3, 48, 48)`` in [0, 1] ->
        ``(N, 64)``) and a dict with ``stereo_top1``, ``stereo_top1_untrained``,
        ``train_seconds``, ``final_loss``, ``config``, ``cache_file`` and
        ``loaded_from_cache``.
    """
    config = dict(DEMO_CONFIG, **({"steps": steps} if steps is not None else {}))

    def build() -> nn.Module:
        torch.manual_seed(config["seed"])
        return SimpleCNN(widths=config["widths"], embedding_dim=config["embedding_dim"])

    def train(model: nn.Module) -> Dict[str, Any]:
        images = tuple(bundled_images().values()) + (stereo_pair()[0],)
        untrained = stereo_top1(model.eval(), config["size"])
        result = fit_contrastive(
            model, _crop_sampler(images, config), steps=config["steps"], lr=config["lr"],
            temperature=config["temperature"], seed=config["seed"], progress=progress,
            desc="training the demo embedder",
        )
        return {"stereo_top1": stereo_top1(model, config["size"]), "stereo_top1_untrained": untrained,
                "train_seconds": result.seconds,
                "final_loss": sum(result.losses[-20:]) / max(1, len(result.losses[-20:]))}

    return _cached("demo_embedder", config, build, train, cache)


def stereo_top1(model: nn.Module, size: int, n: int = 50, seed: int = 123) -> float:
    """Fraction of ``n`` left stereo crops whose most similar right crop, among
    ``n`` right crops each under a random view, is the corresponding one.

    Corresponding crops of the two rectified views are nearly identical, so
    plain stereo matching is easy even for an untrained network; the random
    views (what the embedder is trained to be invariant to) make it a test of
    what was learnt.
    """
    left, right, _ = stereo_crops(n, size=size, seed=seed)
    right = random_views(right, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        scores = torch.nn.functional.normalize(model(left), dim=1) @ torch.nn.functional.normalize(
            model(right), dim=1
        ).T
    return float((scores.argmax(1) == torch.arange(n)).float().mean())


def orl_embedder(
    root: Union[str, Path],
    cache: bool = True,
    progress: bool = False,
    steps: Optional[int] = None,
    overrides: Optional[Dict[str, Any]] = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    r"""A small ResNet trained on 30 ORL identities with batch-hard triplet loss.

    Training (``ORL_CONFIG``): subjects s1..s30 resized to 56x46 (grey,
    one channel), P x K batches of 8 identities x 4 images with random views.
    Held-out subjects s31..s40 are only used for the reported leave-one-out
    retrieval metrics.

    Args:
        root (str or Path): ORL folder (``s1`` .. ``s40``).
        cache (bool, optional): Load from / save to :func:`cache_dir`.
            Default: True
        progress (bool, optional): Show a progress bar while training.
            Default: False
        steps (int, optional): Override the number of steps.
            Default: None
        overrides (dict, optional): Other ``ORL_CONFIG`` entries to change
            (e.g. ``{"size": [28, 23], "widths": [8, 16, 32]}`` for a tiny
            model); a different configuration is cached separately.
            Default: None

    Returns:
        tuple: the embedder in eval mode (``(N, 1, 56, 46)`` -> ``(N, 64)``
        with the default configuration)
        and a dict with held-out ``recall_at_1``, ``mean_average_precision``,
        ``train_seconds``, ``config`` and ``cache_file``.
    """
    unknown = set(overrides or {}) - set(ORL_CONFIG)
    if unknown:
        raise ValueError(f"unknown ORL_CONFIG keys {sorted(unknown)}; known: {sorted(ORL_CONFIG)}")
    config = {**ORL_CONFIG, **(overrides or {}), **({"steps": steps} if steps is not None else {})}
    faces = load_orl_faces(root, size=tuple(config["size"]))
    train_set, test_set = identity_split(faces, config["n_train"])

    def train(model: nn.Module) -> Dict[str, Any]:
        result = fit_orl(model, train_set.images, train_set.labels, config, progress=progress)
        with torch.no_grad():
            metrics = retrieval_metrics(model(test_set.images), test_set.labels)
        return dict(metrics, train_seconds=result.seconds)

    return _cached("orl_embedder", config, lambda: orl_model(config), train, cache)


def orl_model(config: Dict[str, Any] = ORL_CONFIG) -> nn.Module:
    """The untrained ORL embedder of a configuration (seeded with ``config["seed"]``)."""
    torch.manual_seed(config["seed"])
    return ResNetEmbedder(
        in_channels=1, widths=config["widths"], embedding_dim=config["embedding_dim"]
    )


def fit_orl(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    config: Dict[str, Any] = ORL_CONFIG,
    extra_loss: Optional[ExtraLossFn] = None,
    progress: bool = False,
) -> FitResult:
    r"""Trains ``model`` on ORL images as :func:`orl_embedder` does.

    Args:
        model (nn.Module): From :func:`orl_model`.
        images (Tensor): Training images ``(M, 1, H, W)``.
        labels (Tensor): Their identities ``(M,)``.
        config (dict, optional): Training configuration.
            Default: ``ORL_CONFIG``
        extra_loss (Callable, optional): Added to the triplet loss at each
            step (see :func:`~captum_similarity.training.fit_metric`).
            Default: None
        progress (bool, optional): Show a progress bar.
            Default: False

    Returns:
        FitResult: losses and duration.
    """
    return fit_metric(
        model, images, labels, steps=config["steps"],
        identities_per_batch=config["identities_per_batch"],
        images_per_identity=config["images_per_identity"], margin=config["margin"],
        extra_loss=extra_loss, lr=config["lr"], seed=config["seed"], progress=progress,
        desc="training the ORL embedder",
    )
