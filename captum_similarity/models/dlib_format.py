"""A reader for dlib's binary serialization of DNN models (``.dat`` files).

Pure Python and numpy: dlib is not needed to read a model. The reader covers
what dlib's face-recognition ResNet is made of (see
:mod:`captum_similarity.models.dlib_resnet`); any other record raises a
:class:`DlibFormatError` naming it.

Encoding, as dlib writes it:

- **integers**: a control byte (bit 7 set for a negative value, the low four
  bits give the byte count, 1 to 8), then the magnitude in that many bytes,
  little-endian. Zero is ``01 00``.
- **booleans**: the ASCII characters ``'0'`` and ``'1'``.
- **strings**: an integer length, then the bytes.
- **floats** (single values): an integer mantissa ``m`` and an integer
  exponent ``e``, value ``m * 2**e``; exponents 32000, 32001 and 32002 stand
  for +inf, -inf and NaN.
- **tensors**: version 2, four integers ``(n, k, nr, nc)``, then
  ``n * k * nr * nc`` little-endian float32 values. An *alias tensor* (a view
  into a layer's parameter tensor) stores only version 1 and its shape.
- **networks**: the loss layer writes version 1, its details and its subnet.
  A computational layer writes version 2, its subnet, its details, three
  booleans and three tensors (gradient buffers, usually empty). The layer
  sitting on the input writes version 3, the input layer's details, its own
  details, three booleans, three tensors and an integer. Tag and skip layers
  write version 1 and their subnet only, so the two cannot be told apart and
  the ids of tag, skip and ``add_prev`` layers are not stored: the wiring
  comes from the network definition the file is checked against.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "DlibFormatError",
    "DlibReader",
    "DlibLayer",
    "DlibNetwork",
    "read_dlib_network",
    "read_file",
    "TAG_OR_SKIP",
    "MAX_FILE_BYTES",
    "MAX_LAYERS",
]

#: Kind given to tag and skip layers, which dlib serializes identically.
TAG_OR_SKIP = "tag_or_skip"

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002

#: Largest file :func:`read_dlib_network` reads (dlib's face network is 22 MB).
MAX_FILE_BYTES = 1 << 30

#: Most layers a network may have (dlib's face network has 130): a file of
#: repeated layer headers is rejected after this many instead of being read
#: to its end.
MAX_LAYERS = 10_000


class DlibFormatError(ValueError):
    """The bytes are not (or not entirely) a dlib serialization the reader knows."""


class DlibReader:
    r"""Reads dlib's serialized primitives from a byte string, front to back.

    Args:
        data (bytes): The serialized bytes.
        source (str, optional): Name used in error messages (a file name).
            Default: ``"<bytes>"``

    Every read advances :attr:`position`; reading past the end, or a value
    that is malformed, raises :class:`DlibFormatError` naming the offset.

    Example::

        >>> r = DlibReader(b"\x01\x05\x81\x03")
        >>> r.integer(), r.integer()
        (5, -3)
    """

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self._data = memoryview(bytes(data))
        self.source = source
        self.position = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def at_end(self) -> bool:
        """Whether every byte has been read."""
        return self.position == len(self._data)

    def error(self, message: str) -> DlibFormatError:
        """A :class:`DlibFormatError` locating ``message`` at the current offset."""
        return DlibFormatError(f"{self.source}, byte {self.position}: {message}")

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes."""
        if n < 0 or self.position + n > len(self._data):
            raise self.error(
                f"unexpected end of data reading {what} ({n} bytes wanted, "
                f"{len(self._data) - self.position} left)"
            )
        out = self._data[self.position : self.position + n]
        self.position += n
        return out

    def integer(self, signed: bool = True, what: str = "an integer") -> int:
        """An integer in dlib's variable-length format.

        Args:
            signed (bool, optional): Whether a negative value is allowed (dlib
                writes unsigned types without a sign bit).
                Default: True
            what (str, optional): What is read, for error messages.
                Default: ``"an integer"``
        """
        control = self.take(1, what)[0]
        size = control & 0x0F
        negative = bool(control & 0x80)
        if size == 0 or size > 8 or control & 0x70:
            self.position -= 1
            raise self.error(f"invalid integer control byte 0x{control:02x} reading {what}")
        if negative and not signed:
            self.position -= 1
            raise self.error(f"negative value where {what} must be unsigned")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if negative else value

    def floating(self, what: str = "a float") -> float:
        """A single float value: mantissa and exponent, ``m * 2**e``."""
        mantissa = self.integer(what=f"the mantissa of {what}")
        exponent = self.integer(what=f"the exponent of {what}")
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def boolean(self, what: str = "a boolean") -> bool:
        """A boolean written as ASCII ``'0'`` or ``'1'``."""
        ch = self.take(1, what)[0]
        if ch not in (0x30, 0x31):
            self.position -= 1
            raise self.error(f"invalid boolean byte 0x{ch:02x} reading {what}")
        return ch == 0x31

    def string(self, what: str = "a string") -> str:
        """A string: unsigned length, then the bytes (decoded as UTF-8)."""
        n = self.integer(signed=False, what=f"the length of {what}")
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} is not valid text") from e

    def _shape(self, version: int, what: str) -> Tuple[int, int, int, int]:
        found = self.integer(what=f"the version of {what}")
        if found != version:
            raise self.error(f"{what} has version {found}, expected {version}")
        shape = tuple(self.integer(what=f"a dimension of {what}") for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.error(f"{what} has a negative dimension: {shape}")
        return shape  # type: ignore[return-value]

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """A tensor: version 2, shape ``(n, k, nr, nc)``, float32 data.

        The size is computed with Python integers (no overflow) and checked
        against the bytes left before anything is allocated.

        Returns:
            numpy.ndarray: float32 array of shape ``(n, k, nr, nc)``.
        """
        shape = self._shape(2, what)
        count = math.prod(shape)
        left = len(self._data) - self.position
        if 4 * count > left:
            raise self.error(
                f"{what} declares shape {shape}, {count} float32 values, but only {left} "
                "bytes are left"
            )
        raw = self.take(4 * count, f"the values of {what}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self, what: str = "an alias tensor") -> Tuple[int, int, int, int]:
        """The shape ``(n, k, nr, nc)`` of an alias tensor (version 1)."""
        return self._shape(1, what)


@dataclass
class DlibLayer:
    """One layer record of a dlib network.

    Attributes:
        kind (str): ``"con"``, ``"affine"``, ``"relu"``, ``"max_pool"``,
            ``"avg_pool"``, ``"add_prev"``, ``"fc"``, or :data:`TAG_OR_SKIP`.
        version (str): The version string dlib wrote (``"con_4"``, ...);
            empty for tag and skip layers.
        fields (dict): Hyperparameters by dlib's names (``num_filters``,
            ``nr``, ``nc``, ``stride_y``, ``stride_x``, ``padding_y``,
            ``padding_x``, ``num_outputs``, ...).
        tensors (dict): Learned parameters as float32 arrays in dlib's
            layout: ``filters`` ``(out, in, nr, nc)`` and ``biases`` for
            ``con``; ``gamma`` and ``beta`` (per channel) for ``affine``;
            ``weights`` ``(num_inputs, num_outputs)`` for ``fc``.
    """

    kind: str
    version: str = ""
    fields: Dict[str, object] = field(default_factory=dict)
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        """A short text such as ``con_4(num_filters=32, nr=7, ...)``."""
        if self.kind == TAG_OR_SKIP:
            return "tag/skip"
        args = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.version}({args})"


@dataclass
class DlibNetwork:
    """A parsed dlib network.

    Attributes:
        loss (dict): The loss layer's version and details (for
            ``loss_metric_2``: ``margin``, ``distance_threshold``).
        input (dict): The input layer's version and details (for
            ``input_rgb_image_sized``: ``mean`` as ``(R, G, B)``, ``nr``,
            ``nc``).
        layers (list of DlibLayer): Every layer from the one on the input to
            the one under the loss, in execution order.
    """

    loss: Dict[str, object]
    input: Dict[str, object]
    layers: List[DlibLayer]

    def count(self, kind: str) -> int:
        """How many layers of a kind the network has."""
        return sum(layer.kind == kind for layer in self.layers)


def _split_params(
    reader: DlibReader, params: np.ndarray, parts: List[Tuple[str, Tuple[int, ...]]], what: str
) -> Dict[str, np.ndarray]:
    """Cuts a layer's flat parameter tensor into its alias tensors, in order."""
    flat = params.reshape(-1)
    need = sum(math.prod(s) for _, s in parts)  # Python integers: no overflow
    if need != flat.size:
        raise reader.error(
            f"{what}: its parameter tensor holds {flat.size} values but its parts "
            f"({', '.join(f'{n} {s}' for n, s in parts)}) need {need}"
        )
    out, start = {}, 0
    for name, shape in parts:
        size = math.prod(shape)
        out[name] = flat[start : start + size].reshape(shape).copy()
        start += size
    return out


def _read_multipliers(reader: DlibReader, what: str, n: int) -> None:
    for _ in range(n):
        reader.floating(f"a learning-rate or weight-decay multiplier of {what}")


def _read_con(reader: DlibReader, version: str) -> DlibLayer:
    what = f"layer {version}"
    params = reader.tensor(f"the parameters of {what}")
    fields: Dict[str, object] = {"num_filters": reader.integer(what="num_filters")}
    for name in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
        fields[name] = reader.integer(what=name)
    filters = reader.alias_tensor(f"the filters of {what}")
    biases = reader.alias_tensor(f"the biases of {what}")
    _read_multipliers(reader, what, 4)
    if version in ("con_5", "con_6"):
        fields["use_bias"] = reader.boolean("use_bias")
    if version == "con_6":
        fields["use_relu"] = reader.boolean("use_relu")
    tensors = _split_params(reader, params, [("filters", filters), ("biases", biases)], what)
    tensors["biases"] = tensors["biases"].reshape(-1)
    return DlibLayer("con", version, fields, tensors)


def _read_affine(reader: DlibReader, version: str) -> DlibLayer:
    what = f"layer {version}"
    params = reader.tensor(f"the parameters of {what}")
    gamma = reader.alias_tensor(f"gamma of {what}")
    beta = reader.alias_tensor(f"beta of {what}")
    fields: Dict[str, object] = {"mode": reader.integer(what="the affine mode")}
    if version == "affine_2":
        fields["disabled"] = reader.boolean("disabled")
    tensors = _split_params(reader, params, [("gamma", gamma), ("beta", beta)], what)
    return DlibLayer(
        "affine", version, fields, {k: v.reshape(-1) for k, v in tensors.items()}
    )


def _read_relu(reader: DlibReader, version: str) -> DlibLayer:
    fields: Dict[str, object] = {}
    if version == "relu_2":
        fields["disabled"] = reader.boolean("disabled")
    return DlibLayer("relu", version, fields)


def _read_pool(reader: DlibReader, version: str) -> DlibLayer:
    fields: Dict[str, object] = {}
    for name in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
        fields[name] = reader.integer(what=name)
    return DlibLayer(version[: -len("_2")], version, fields)


def _read_add_prev(reader: DlibReader, version: str) -> DlibLayer:
    return DlibLayer("add_prev", version)


def _read_fc(reader: DlibReader, version: str) -> DlibLayer:
    what = f"layer {version}"
    fields: Dict[str, object] = {
        "num_outputs": reader.integer(what="num_outputs"),
        "num_inputs": reader.integer(what="num_inputs"),
    }
    params = reader.tensor(f"the parameters of {what}")
    weights = reader.alias_tensor(f"the weights of {what}")
    biases = reader.alias_tensor(f"the biases of {what}")
    fields["bias_mode"] = reader.integer(what="the bias mode")
    _read_multipliers(reader, what, 4)
    if version == "fc_3":
        fields["use_bias"] = reader.boolean("use_bias")
    parts = [("weights", weights)]
    if fields["bias_mode"] == 0:  # FC_HAS_BIAS
        parts.append(("biases", biases))
    tensors = _split_params(reader, params, parts, what)
    rows = int(fields["num_inputs"])  # type: ignore[call-overload]
    cols = int(fields["num_outputs"])  # type: ignore[call-overload]
    if rows * cols != tensors["weights"].size:
        raise reader.error(
            f"{what}: {rows} inputs x {cols} outputs do not match its "
            f"{tensors['weights'].size} weights"
        )
    tensors["weights"] = tensors["weights"].reshape(rows, cols)
    return DlibLayer("fc", version, fields, tensors)


_LAYER_READERS: Dict[str, Callable[[DlibReader, str], DlibLayer]] = {
    "con_4": _read_con,
    "con_5": _read_con,
    "con_6": _read_con,
    "affine_": _read_affine,
    "affine_2": _read_affine,
    "relu_": _read_relu,
    "relu_2": _read_relu,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "add_prev_": _read_add_prev,
    "fc_2": _read_fc,
    "fc_3": _read_fc,
}


def _read_layer_details(reader: DlibReader) -> DlibLayer:
    start = reader.position
    version = reader.string("a layer's version string")
    if version not in _LAYER_READERS:
        reader.position = start
        raise reader.error(
            f"unsupported layer {version!r}; this reader knows "
            + ", ".join(sorted(_LAYER_READERS))
        )
    return _LAYER_READERS[version](reader, version)


def _skip_layer_state(reader: DlibReader, what: str) -> None:
    """The bookkeeping dlib stores after a layer's details: 3 booleans, 3 tensors."""
    for _ in range(3):
        reader.boolean(f"a state flag of {what}")
    for _ in range(3):
        reader.tensor(f"a gradient or output buffer of {what}")


def _read_loss(reader: DlibReader) -> Dict[str, object]:
    version = reader.string("the loss layer's version string")
    if version == "loss_metric_2":
        margin = reader.floating("the loss margin")
        threshold = reader.floating("the distance threshold")
        return {"version": version, "margin": margin, "distance_threshold": threshold}
    if version == "loss_metric_":
        return {"version": version, "margin": 0.1, "distance_threshold": 0.75}
    raise reader.error(
        f"the loss layer is {version!r}; only dlib's metric-learning loss "
        "('loss_metric_2') is supported"
    )


def _read_input(reader: DlibReader) -> Dict[str, object]:
    version = reader.string("the input layer's version string")
    if version != "input_rgb_image_sized":
        raise reader.error(
            f"the input layer is {version!r}; only 'input_rgb_image_sized' is supported"
        )
    mean = tuple(reader.floating(f"the mean {c} value") for c in ("red", "green", "blue"))
    nr = reader.integer(signed=False, what="the input rows")
    nc = reader.integer(signed=False, what="the input columns")
    return {"version": version, "mean": mean, "nr": nr, "nc": nc}


def read_file(path: Union[str, Path], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    r"""The bytes of a regular file of at most ``max_bytes`` bytes.

    Only regular files are read (a FIFO, a device such as ``/dev/zero`` or a
    directory is refused before it is opened), and never more than the size
    the file had when it was checked.

    Raises:
        FileNotFoundError: no such file.
        DlibFormatError: not a regular file, or larger than ``max_bytes``.
    """
    path = Path(path)
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise DlibFormatError(f"{path} is not a regular file (a FIFO, device or directory)")
    if info.st_size > max_bytes:
        raise DlibFormatError(
            f"{path} has {info.st_size} bytes, more than the {max_bytes} a dlib network is "
            "read from (max_bytes)"
        )
    with open(path, "rb") as f:
        return f.read(info.st_size)


def read_dlib_network(source: Union[str, Path, bytes], name: Optional[str] = None) -> DlibNetwork:
    r"""Parses a dlib DNN file made of the layers the face ResNet uses.

    Reading is bounded: a path must be a regular file of at most
    :data:`MAX_FILE_BYTES` (see :func:`read_file`), every declared size is
    checked against the bytes left before anything is allocated, and a
    network of more than :data:`MAX_LAYERS` layers is rejected; so malformed
    or hostile data is rejected in time linear in its size.

    Args:
        source (str, Path or bytes): A file path, or the file's bytes.
        name (str, optional): What error messages call the data.
            Default: None (the path, or ``"<bytes>"``)

    Returns:
        DlibNetwork: the loss and input details and every layer, in execution
        order (from the input up).

    Raises:
        DlibFormatError: the data is malformed, truncated, has bytes left
            over, or holds a layer, loss or input type the reader does not
            know. (A subclass of ``ValueError``.)
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        reader = DlibReader(bytes(source), source=name or "<bytes>")
    else:
        reader = DlibReader(read_file(source), source=name or str(source))
    version = reader.integer(what="the network's version")
    if version != 1:
        raise reader.error(
            f"the file starts with version {version}; a dlib network with a loss "
            "layer starts with version 1"
        )
    loss = _read_loss(reader)
    # Wrapper versions, outermost first, down to the layer on the input (3).
    wrappers: List[int] = []
    while True:
        v = reader.integer(what="a layer's version")
        if v == 3:
            break
        if v not in (1, 2):
            raise reader.error(f"unexpected layer version {v} (dlib writes 1, 2 or 3)")
        if len(wrappers) == MAX_LAYERS:
            raise reader.error(f"more than {MAX_LAYERS} layers (MAX_LAYERS); not a network")
        wrappers.append(v)
    inp = _read_input(reader)
    layers = [_read_layer_details(reader)]
    _skip_layer_state(reader, "the first layer")
    reader.integer(what="the sample expansion factor")
    for v in reversed(wrappers):
        if v == 1:
            layers.append(DlibLayer(TAG_OR_SKIP))
            continue
        layers.append(_read_layer_details(reader))
        _skip_layer_state(reader, f"layer {layers[-1].version}")
    if not reader.at_end:
        raise reader.error(f"{len(reader) - reader.position} bytes left after the network")
    return DlibNetwork(loss=loss, input=inp, layers=layers)
