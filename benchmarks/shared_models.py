"""Models that several benchmark scripts measure (random weights, float32;
each entry builds a fresh model).

- :data:`LRP_MODELS`: the reference models by kind, built for an image size
  (``methods/bench_lrp.py``, ``engine/bench_layout.py``);
- :data:`PAIRX_MODELS` and :data:`PAIRX_LAYERS`: the two 224x224 models of
  the PAIR-X speed benchmark and the layer each is explained at
  (``methods/bench_pairx.py``, ``engine/pass_memory.py``; the ResNet-style one
  in ``engine/bench_strided_shortcut.py``).
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from captum_similarity.models import (
    EfficientNetEmbedder,
    ResNetEmbedder,
    SimpleCNN,
    ViTEmbedder,
)

LRP_MODELS: Dict[str, Callable[[int], nn.Module]] = {
    "cnn": lambda size: SimpleCNN(),
    "resnet": lambda size: ResNetEmbedder(),
    "efficientnet": lambda size: EfficientNetEmbedder(),
    "vit": lambda size: ViTEmbedder(image_size=size, patch_size=8),
}

PAIRX_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "EfficientNet-style (B0 stages, SE)": lambda: EfficientNetEmbedder(
        stages=((16, 1, 1), (24, 2, 2), (40, 2, 2), (80, 2, 3), (112, 1, 3), (192, 2, 4)),
        head_channels=512,
        embedding_dim=128,
    ),
    "ResNet-style (5 stages, stride-1 stem)": lambda: ResNetEmbedder(
        widths=(16, 32, 64, 128, 256), embedding_dim=128
    ),
}
PAIRX_LAYERS: Dict[str, str] = {
    "EfficientNet-style (B0 stages, SE)": "blocks.7",
    "ResNet-style (5 stages, stride-1 stem)": "layer5",
}
