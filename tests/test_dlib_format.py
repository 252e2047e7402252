"""dlib's serialization reader, and loading dlib networks written byte by byte.

Primitives are checked against literal byte strings worked out by hand from
dlib's encoding. A small writer of the same encoding (checked against those
literals) builds whole network files from a randomly initialised
:class:`DlibFaceResNet`, so loading and every structural error are tested
without the weights package.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from torch import nn

from captum_similarity.models import Affine, DlibFaceResNet, dlib_face_resnet
from captum_similarity.models.dlib_format import (
    TAG_OR_SKIP,
    DlibFormatError,
    DlibReader,
    read_dlib_network,
)

# --------------------------------------------------------------------------
# Primitives against hand-built bytes


@pytest.mark.parametrize(
    "raw, value",
    [
        (b"\x01\x00", 0),
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),
        (b"\x01\xff", 255),
        (b"\x02\x00\x01", 256),
        (b"\x82\x34\x12", -0x1234),
        (b"\x04\x78\x56\x34\x12", 0x12345678),
        (b"\x08" + (2**63 - 1).to_bytes(8, "little"), 2**63 - 1),
        (b"\x88" + (2**63 - 1).to_bytes(8, "little"), -(2**63 - 1)),
    ],
)
def test_integers(raw, value):
    r = DlibReader(raw)
    assert r.integer() == value
    assert r.at_end


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00", "control byte"),  # a size of 0 bytes is never written
        (b"\x09" + bytes(9), "control byte"),  # more than 8 bytes
        (b"\x11\x05", "control byte"),  # reserved bits set
        (b"\x03\x01\x02", "unexpected end"),
        (b"", "unexpected end"),
    ],
)
def test_malformed_integers(raw, message):
    with pytest.raises(DlibFormatError, match=message):
        DlibReader(raw).integer()


def test_unsigned_rejects_sign_bit():
    with pytest.raises(DlibFormatError, match="unsigned"):
        DlibReader(b"\x81\x05").integer(signed=False)


@pytest.mark.parametrize(
    "raw, value",
    [
        # 1.0: frexp gives 0.5 * 2**1; mantissa 2**23, exponent -23; three
        # zero low bytes shifted off: 0x80 * 2**-7.
        (b"\x01\x80" + b"\x81\x07", 1.0),
        # 0.0: mantissa 0, exponent -24 + 64 after eight shifts.
        (b"\x01\x00" + b"\x01\x28", 0.0),
        # -2.5 = -0.625 * 2**2: mantissa -0xa00000 shifted twice, -0xa0 * 2**-6.
        (b"\x81\xa0" + b"\x81\x06", -2.5),
        # 0.04 (dlib's stored loss margin): 0xa3d70a * 2**-28.
        (b"\x03\x0a\xd7\xa3" + b"\x81\x1c", float(np.float32(0.04))),
        (b"\x01\x00" + b"\x02\x00\x7d", math.inf),  # exponent 32000
        (b"\x01\x00" + b"\x02\x01\x7d", -math.inf),  # exponent 32001
    ],
)
def test_floats(raw, value):
    r = DlibReader(raw)
    assert r.floating() == value
    assert r.at_end


def test_float_nan():
    assert math.isnan(DlibReader(b"\x01\x00" + b"\x02\x02\x7d").floating())  # 32002


def test_strings_and_booleans():
    r = DlibReader(b"\x01\x05con_4" + b"\x01\x00" + b"10")
    assert r.string() == "con_4"
    assert r.string() == ""
    assert r.boolean() is True
    assert r.boolean() is False
    assert r.at_end
    with pytest.raises(DlibFormatError, match="boolean"):
        DlibReader(b"2").boolean()
    with pytest.raises(DlibFormatError, match="unexpected end"):
        DlibReader(b"\x01\x09abc").string()


def test_tensors():
    dims = b"\x01\x01" + b"\x01\x02" + b"\x01\x01" + b"\x01\x02"  # (1, 2, 1, 2)
    values = [1.0, -2.0, 0.5, math.inf]
    r = DlibReader(b"\x01\x02" + dims + struct.pack("<4f", *values) + b"\x01\x01" + dims)
    t = r.tensor()
    assert t.dtype == np.float32 and t.shape == (1, 2, 1, 2)
    assert t.reshape(-1).tolist() == values
    assert r.alias_tensor() == (1, 2, 1, 2)
    assert r.at_end
    empty = DlibReader(b"\x01\x02" + b"\x01\x00" * 4).tensor()
    assert empty.shape == (0, 0, 0, 0)


def test_tensor_errors():
    dims = b"\x01\x01" * 4
    with pytest.raises(DlibFormatError, match="version 1, expected 2"):
        DlibReader(b"\x01\x01" + dims + bytes(4)).tensor()
    with pytest.raises(DlibFormatError, match="only 4 bytes are left"):
        DlibReader(b"\x01\x02" + b"\x01\x02" + b"\x01\x01" * 3 + bytes(4)).tensor()
    with pytest.raises(DlibFormatError, match="negative dimension"):
        DlibReader(b"\x01\x02" + b"\x81\x01" + b"\x01\x01" * 3).tensor()


# --------------------------------------------------------------------------
# A writer of dlib's encoding, for building network files in tests


def enc_int(v: int) -> bytes:
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def enc_float(v: float) -> bytes:
    """dlib's float encoding of a float32 value (24-bit mantissa, low zero bytes dropped)."""
    if math.isinf(v):
        return enc_int(0) + enc_int(32000 if v > 0 else 32001)
    if math.isnan(v):
        return enc_int(0) + enc_int(32002)
    frac, exp = math.frexp(float(np.float32(v)))
    mantissa, exponent = int(frac * (1 << 24)), exp - 24
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return enc_int(mantissa) + enc_int(exponent)


def enc_str(s: str) -> bytes:
    return enc_int(len(s)) + s.encode()


def enc_tensor(a: np.ndarray) -> bytes:
    a = np.asarray(a, dtype="<f4")
    shape = a.shape + (1,) * (4 - a.ndim)
    return enc_int(2) + b"".join(enc_int(d) for d in shape) + a.tobytes()


def enc_alias(*shape: int) -> bytes:
    return enc_int(1) + b"".join(enc_int(d) for d in shape)


def enc_layer(kind: str, m: nn.Module) -> bytes:
    def np_(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy()

    if kind == "con":
        flat = np.concatenate([np_(m.weight).ravel(), np_(m.bias)])
        return (
            enc_str("con_4") + enc_tensor(flat) + enc_int(m.out_channels)
            + b"".join(enc_int(v) for v in (*m.kernel_size, *m.stride, *m.padding))
            + enc_alias(*m.weight.shape) + enc_alias(1, m.out_channels, 1, 1)
            + b"".join(enc_float(v) for v in (1.0, 1.0, 1.0, 0.0))
        )
    if kind == "affine":
        c = m.num_channels
        return (
            enc_str("affine_") + enc_tensor(np.concatenate([np_(m.weight), np_(m.bias)]))
            + enc_alias(1, c, 1, 1) + enc_alias(1, c, 1, 1) + enc_int(0)
        )
    if kind in ("max_pool", "avg_pool"):
        if isinstance(m, nn.AdaptiveAvgPool2d):
            values = (0, 0, 1, 1, 0, 0)
        else:
            values = (m.kernel_size, m.kernel_size, m.stride, m.stride, m.padding, m.padding)
        return enc_str(f"{kind}_2") + b"".join(enc_int(v) for v in values)
    if kind == "fc":
        w = np_(m.weight).T  # dlib: (num_inputs, num_outputs), y = x W
        return (
            enc_str("fc_2") + enc_int(w.shape[1]) + enc_int(w.shape[0]) + enc_tensor(w)
            + enc_alias(*w.shape, 1, 1) + enc_alias(0, 0, 0, 0) + enc_int(1)
            + b"".join(enc_float(v) for v in (1.0, 1.0, 1.0, 0.0))
        )
    return enc_str({"relu": "relu_", "add_prev": "add_prev_"}[kind])


STATE = b"110" + enc_tensor(np.zeros((0, 0, 0, 0))) * 3


def write_network(steps, size: int = 150, loss: bytes = b"") -> bytes:
    """dlib's serialization of a network whose layers are ``steps`` (input first)."""
    loss = loss or enc_str("loss_metric_2") + enc_float(0.04) + enc_float(0.6)
    out = [enc_int(1), loss]
    out += [enc_int(1 if kind == TAG_OR_SKIP else 2) for kind, _ in reversed(steps[1:])]
    out += [enc_int(3), enc_str("input_rgb_image_sized")]
    out += [enc_float(v) for v in (122.782, 117.001, 104.298)] + [enc_int(size), enc_int(size)]
    out += [enc_layer(*steps[0]), STATE, enc_int(1)]
    for kind, module in steps[1:]:
        if kind != TAG_OR_SKIP:
            out += [enc_layer(kind, module), STATE]
    return b"".join(out)


def test_writer_matches_hand_built_bytes():
    assert enc_int(0) == b"\x01\x00" and enc_int(-0x1234) == b"\x82\x34\x12"
    assert enc_float(1.0) == b"\x01\x80\x81\x07"
    assert enc_float(-2.5) == b"\x81\xa0\x81\x06"
    assert enc_float(0.0) == b"\x01\x00\x01\x28"
    assert enc_float(0.04) == b"\x03\x0a\xd7\xa3\x81\x1c"


def test_random_values_round_trip():
    rng = np.random.default_rng(0)
    ints = [int(v) for v in rng.integers(-(2**62), 2**62, 200)] + [0, 1, -1, 255, 256]
    floats = [float(v) for v in rng.standard_normal(200).astype(np.float32) * 1e3]
    floats += [float(np.float32(v)) for v in (1e-30, -0.0, 3.0e38)]
    r = DlibReader(b"".join(map(enc_int, ints)) + b"".join(map(enc_float, floats)))
    assert [r.integer() for _ in ints] == ints
    assert [r.floating() for _ in floats] == floats
    assert r.at_end


# --------------------------------------------------------------------------
# Whole networks


@pytest.fixture(scope="module")
def random_net() -> DlibFaceResNet:
    torch.manual_seed(0)
    model = DlibFaceResNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # keeps activations away from slow subnormals
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if type(m) is Affine:
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.05)
    return model.eval()


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "net.dat"
    path.write_bytes(data)
    return path


def test_loads_a_written_network(tmp_path, random_net):
    loaded = dlib_face_resnet(_write(tmp_path, write_network(random_net.dlib_steps())))
    assert not loaded.training
    expected = random_net.state_dict()
    for name, value in loaded.state_dict().items():
        if name.startswith("normalize."):
            continue  # the file's mean is stored as a float, compared below
        assert torch.equal(value, expected[name]), name
    mean = -loaded.normalize.bias.detach() * 256
    assert torch.allclose(mean, torch.tensor([122.782, 117.001, 104.298]), atol=1e-4)
    x = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(x), random_net(x), atol=1e-5)
    assert loaded.distance_threshold == pytest.approx(0.6)


def test_parsed_structure(random_net):
    net = read_dlib_network(write_network(random_net.dlib_steps()))
    assert net.count("con") == 29 and net.count("affine") == 29
    assert net.count("add_prev") == 14 and net.count("fc") == 1
    assert net.input["nr"] == net.input["nc"] == 150
    assert net.loss["margin"] == pytest.approx(0.04)
    fc = net.layers[-1]
    assert fc.tensors["weights"].shape == (256, 128)


def test_missing_block_is_named(tmp_path, random_net):
    steps = random_net.dlib_steps()
    first_block = random_net.layer1[0].dlib_steps()
    short = steps[:4] + steps[4 + len(first_block):]
    message = r"not dlib's face-recognition ResNet.*con 27 \(expected 29\)"
    with pytest.raises(ValueError, match=message):
        dlib_face_resnet(_write(tmp_path, write_network(short)))


def test_wrong_stride_is_named(tmp_path, random_net):
    model = DlibFaceResNet()
    model.layer2[0].conv1.stride = (1, 1)
    with pytest.raises(ValueError, match=r"layer2|layer \d+ \(con_4.*stride"):
        dlib_face_resnet(_write(tmp_path, write_network(model.dlib_steps())))


def test_wrong_input_size(tmp_path, random_net):
    with pytest.raises(ValueError, match="takes 151x151"):
        dlib_face_resnet(_write(tmp_path, write_network(random_net.dlib_steps(), size=151)))


def test_other_loss(tmp_path, random_net):
    data = write_network(random_net.dlib_steps(), loss=enc_str("loss_multiclass_log_"))
    with pytest.raises(DlibFormatError, match="(?s)loss_multiclass_log_.*face-recognition"):
        dlib_face_resnet(_write(tmp_path, data))


def test_unknown_layer(random_net):
    data = write_network(random_net.dlib_steps())
    data = data.replace(enc_str("relu_"), enc_str("prelu"), 1)
    with pytest.raises(DlibFormatError, match="unsupported layer 'prelu'"):
        read_dlib_network(data)


def test_truncated_and_trailing(random_net):
    data = write_network(random_net.dlib_steps())
    with pytest.raises(DlibFormatError, match="unexpected end|bytes are left"):
        read_dlib_network(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="2 bytes left"):
        read_dlib_network(data + b"\x01\x00")


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        dlib_face_resnet(tmp_path / "missing.dat")


def test_layer_list_is_dlib_definition(random_net):
    """The steps follow dlib's published definition: 29 convolutions, 14 additions,
    and the tag/skip wiring of its two residual block types."""
    kinds: List[str] = [k for k, _ in random_net.dlib_steps()]
    assert len(kinds) == 130
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14
    assert kinds.count(TAG_OR_SKIP) == 14 + 2 * 4  # one per block, two more per downsampling
    assert sum(p.numel() for p in random_net.parameters()) == 5_614_592


# --------------------------------------------------------------------------
# Untrusted files: bounded reading, overflow-safe sizes, linear-time rejection


def test_declared_sizes_are_checked_before_allocation():
    """(2^32, 2^32, 1, 1) overflows a 64-bit product to 0; the reader counts in
    Python integers and compares with the bytes left."""
    huge = b"\x05" + (2**32).to_bytes(5, "little")
    with pytest.raises(DlibFormatError, match=r"declares shape \(4294967296, 4294967296, 1, 1\)"):
        DlibReader(b"\x01\x02" + huge + huge + b"\x01\x01" * 2 + bytes(64)).tensor()


def _header() -> bytes:
    return enc_int(1) + enc_str("loss_metric_2") + enc_float(0.04) + enc_float(0.6)


def test_repeated_layer_records_are_rejected_at_the_layer_bound():
    """2 MB of repeated layer headers: rejected after MAX_LAYERS of them, not
    at the end of the data."""
    from captum_similarity.models.dlib_format import MAX_LAYERS

    data = _header() + enc_int(1) * 1_000_000
    with pytest.raises(DlibFormatError, match=f"more than {MAX_LAYERS} layers") as error:
        read_dlib_network(data)
    offset = int(str(error.value).split("byte ")[1].split(":")[0])
    assert offset <= len(_header()) + 2 * (MAX_LAYERS + 1)  # one record past the bound


def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    import os

    from captum_similarity.models.dlib_format import read_file

    for special in ("/dev/zero", str(tmp_path)):
        with pytest.raises(DlibFormatError, match="not a regular file"):
            read_dlib_network(special)
    fifo = tmp_path / "pipe.dat"
    os.mkfifo(fifo)
    with pytest.raises(DlibFormatError, match="not a regular file"):  # would block when opened
        read_dlib_network(fifo)
    with pytest.raises(DlibFormatError, match="not a regular file"):
        dlib_face_resnet(fifo)
    small = tmp_path / "small.dat"
    small.write_bytes(bytes(100))
    with pytest.raises(DlibFormatError, match="more than the 10 a dlib network"):
        read_file(small, max_bytes=10)
    assert read_file(small) == bytes(100)
