"""Embedders: small reference architectures and dlib's pretrained face ResNet.

The reference architectures cover what users bring (a plain CNN, ResNet
blocks with BatchNorm and residual additions, EfficientNet-style blocks with
squeeze-excitation, a Vision Transformer). They are small enough to train and
explain on a CPU in seconds, and every method of the library is tested on them.

:func:`dlib_face_resnet` loads a real pretrained similarity model, dlib's
face-recognition ResNet, from the optional ``faces`` extra;
:func:`face_chips` prepares face images for it.
"""

from .cnn import SimpleCNN
from .dlib_resnet import (
    Affine,
    DlibFaceResNet,
    DlibResidualBlock,
    InputNormalization,
    ZeroPadAdd,
    dlib_face_resnet,
)
from .efficientnet import EfficientNetEmbedder, MBConv, SqueezeExcitation
from .face_preprocess import face_chips, pad_to_square
from .resnet import BasicBlock, ResNetEmbedder
from .vit import ChannelsLast, TokenGrid, ViTEmbedder

__all__ = [
    "SimpleCNN",
    "ResNetEmbedder",
    "BasicBlock",
    "EfficientNetEmbedder",
    "MBConv",
    "SqueezeExcitation",
    "ViTEmbedder",
    "TokenGrid",
    "ChannelsLast",
    "dlib_face_resnet",
    "DlibFaceResNet",
    "DlibResidualBlock",
    "Affine",
    "InputNormalization",
    "ZeroPadAdd",
    "face_chips",
    "pad_to_square",
]
