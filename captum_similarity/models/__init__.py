"""Embedders: small reference architectures and a trained demo embedder.

The reference architectures cover what users bring (a plain CNN, ResNet
blocks with BatchNorm and residual additions, EfficientNet-style blocks with
squeeze-excitation, a Vision Transformer). They are small enough to train and
explain on a CPU in seconds, and every method of the library is tested on them.
"""

from .cnn import SimpleCNN
from .efficientnet import EfficientNetEmbedder, MBConv, SqueezeExcitation
from .resnet import BasicBlock, ResNetEmbedder
from .vit import TokenGrid, ViTEmbedder

__all__ = [
    "SimpleCNN",
    "ResNetEmbedder",
    "BasicBlock",
    "EfficientNetEmbedder",
    "MBConv",
    "SqueezeExcitation",
    "ViTEmbedder",
    "TokenGrid",
]
