"""The torchvision and timm backbones the library is tested on, as embedders.

:data:`BACKBONES` lists the architectures of the model matrix
(``tests/test_backbones.py``) and of the supported-architectures table
(``benchmarks/methods/backbone_table.py``, ``docs/backbones.md``): one line
each. :func:`backbone` builds one with random weights and an
``embedding_dim``-d linear head, at a small input size where the
architecture allows one, and calibrates its BatchNorm statistics on a few
bundled images (the statistics of a randomly initialised network are
degenerate: every BatchNorm would normalise with mean 0 and variance 1).

torchvision and timm are optional: building a backbone of a library that is
not installed raises an ``ImportError`` saying so.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "BACKBONES",
    "backbone",
    "calibrate_batchnorm",
    "calibration_images",
    "held_out_images",
]


class Backbone(NamedTuple):
    """One architecture of :data:`BACKBONES`.

    Attributes:
        library (str): ``"torchvision"`` or ``"timm"``.
        architecture (str): Its name in that library.
        family (str): ResNet, DenseNet, MobileNet, RegNet, EfficientNet,
            ConvNeXt, Swin or ViT.
        kwargs (dict): Extra arguments of the constructor; ``"{size}"`` is
            replaced by the input size.
        lrp_bound (float): The conservation error (relative to the seed's
            magnitude) the model matrix holds LRP to on this architecture
            with the default composite; larger where z+ meets depthwise
            convolutions, whose few inputs per output are often all negative.
    """

    library: str
    architecture: str
    family: str
    kwargs: Dict[str, Any] = {}
    lrp_bound: float = 0.05


#: The model matrix: name -> :class:`Backbone`. A new architecture is one line.
BACKBONES: Dict[str, Backbone] = {
    "torchvision/resnet50": Backbone("torchvision", "resnet50", "ResNet"),
    "torchvision/densenet121": Backbone("torchvision", "densenet121", "DenseNet"),
    "torchvision/mobilenet_v3_large": Backbone("torchvision", "mobilenet_v3_large", "MobileNet", lrp_bound=0.25),
    "torchvision/regnet_y_400mf": Backbone("torchvision", "regnet_y_400mf", "RegNet"),
    "torchvision/efficientnet_b0": Backbone("torchvision", "efficientnet_b0", "EfficientNet", lrp_bound=0.2),
    "torchvision/convnext_tiny": Backbone("torchvision", "convnext_tiny", "ConvNeXt"),
    "torchvision/swin_t": Backbone("torchvision", "swin_t", "Swin"),
    "torchvision/vit_b_16": Backbone("torchvision", "vit_b_16", "ViT", {"image_size": "{size}"}),
    "timm/resnet50d": Backbone("timm", "resnet50d", "ResNet"),
    "timm/efficientnetv2_rw_s": Backbone("timm", "efficientnetv2_rw_s", "EfficientNet", lrp_bound=0.2),
    "timm/convnext_nano": Backbone("timm", "convnext_nano", "ConvNeXt"),
    "timm/vit_small_patch16_224": Backbone("timm", "vit_small_patch16_224", "ViT", {"img_size": "{size}"}),
    "timm/deit_small_patch16_224": Backbone("timm", "deit_small_patch16_224", "ViT", {"img_size": "{size}"}),
}  # fmt: skip

#: Bundled scikit-image images the BatchNorm statistics are calibrated on.
CALIBRATION_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
#: Bundled images the calibration does not use (the model matrix's pair).
HELD_OUT_IMAGES = ("immunohistochemistry", "retina")


def _library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"this backbone needs {name}, which is not installed (pip install torchvision timm)"
        ) from err


def _build(entry: Backbone, embedding_dim: int, size: int) -> nn.Module:
    kwargs = {k: (size if v == "{size}" else v) for k, v in entry.kwargs.items()}
    if entry.library == "torchvision":
        models = _library("torchvision").models
        return getattr(models, entry.architecture)(weights=None, num_classes=embedding_dim, **kwargs)
    if entry.library == "timm":
        timm = _library("timm")
        return timm.create_model(entry.architecture, pretrained=False, num_classes=embedding_dim, **kwargs)
    raise ValueError(f"unknown library {entry.library!r}")


def _resized(names: Tuple[str, ...], size: int) -> List[Tensor]:
    from ..data.samples import bundled_images

    return [
        F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)[0]
        for img in bundled_images(names).values()
    ]


def calibration_images(size: int, count: int = 8) -> Tensor:
    """``count`` images ``(count, 3, size, size)`` in [0, 1]: the bundled
    :data:`CALIBRATION_IMAGES`, resized, and their mirror images."""
    images = _resized(CALIBRATION_IMAGES, size)
    images += [img.flip(-1) for img in images]
    return torch.stack([images[i % len(images)] for i in range(count)])


def held_out_images(size: int) -> Tensor:
    """The bundled :data:`HELD_OUT_IMAGES` ``(2, 3, size, size)`` in [0, 1]:
    natural images the calibration did not see. (Inputs unlike the
    calibration images, uniform noise for one, drive random-weight networks
    far from their statistics: embeddings of norm 1e4 to 1e5 whose float32
    cosine changes with the batch they are computed in.)"""
    return torch.stack(_resized(HELD_OUT_IMAGES, size))


def calibrate_batchnorm(model: nn.Module, images: Tensor) -> nn.Module:
    r"""Sets every BatchNorm's running statistics to those of ``images`` (one
    forward pass in train mode, without gradients) and returns the model in
    eval mode. Nothing else changes.

    Args:
        model (nn.Module): The model.
        images (Tensor): A batch of inputs.

    Returns:
        nn.Module: ``model``, in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly this batch's statistics
    model.train()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


def backbone(
    name: str,
    embedding_dim: int = 128,
    image_size: int = 64,
    seed: int = 0,
    calibrate: bool = True,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    r"""A backbone of :data:`BACKBONES` as an embedder with random weights.

    Args:
        name (str): A key of :data:`BACKBONES`, e.g. ``"timm/resnet50d"``.
        embedding_dim (int, optional): Width of the linear head (the
            classifier layer, ``num_classes``).
            Default: 128
        image_size (int, optional): Input size; ViTs are built for it.
            Default: 64
        seed (int, optional): Seed of the random weights.
            Default: 0
        calibrate (bool, optional): Calibrate the BatchNorm statistics on
            :func:`calibration_images`.
            Default: True
        dtype (torch.dtype, optional): Convert the model to it.
            Default: None (float32)

    Returns:
        nn.Module: in eval mode, mapping ``(N, 3, image_size, image_size)``
        to ``(N, embedding_dim)``.

    Raises:
        ValueError: unknown name.
        ImportError: its library is not installed.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    torch.manual_seed(seed)
    model = _build(BACKBONES[name], embedding_dim, image_size)
    for module in model.modules():  # a zero-initialised head (torchvision's ViT) gives f = 0
        if isinstance(module, nn.Linear) and module.out_features == embedding_dim:
            if not bool(module.weight.detach().any()):
                nn.init.normal_(module.weight, std=module.in_features**-0.5)
    if dtype is not None:
        model = model.to(dtype)
    if calibrate:
        images = calibration_images(image_size)
        calibrate_batchnorm(model, images.to(dtype or images.dtype))
    return model.eval()
