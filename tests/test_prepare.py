"""ImagePreparation: the matrix resize equals scikit-image's resize image by image."""

import numpy as np
import pytest
import torch
from skimage.transform import resize

from captum_similarity.data import prepare
from captum_similarity.data.prepare import ImagePreparation, parse_normalization, resize_images


def _reference(image: np.ndarray, size) -> np.ndarray:
    arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if arr.shape[:2] != tuple(size):
        arr = resize(arr, size, order=1, anti_aliasing=True)
    return arr.astype(np.float32).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((112, 92), (224, 224)),  # enlarged both ways
        ((333, 517), (224, 224)),  # shrunk both ways: smoothed first
        ((60, 300), (120, 75)),  # enlarged rows, shrunk columns
        ((40, 40), (40, 40)),  # used as it is
    ],
)
def test_prepared_images_equal_scikit_image_resize(shape, size):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
        rng.random((*shape, 3)).astype(np.float32),
    ]
    got, shown, notes = ImagePreparation(size)(images)
    want = np.stack([_reference(i, size) for i in images])
    assert got.shape == (2, 3, *size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)
    assert len(shown) == 2 and shown[0].dtype == np.uint8
    assert notes[0] == ("used at its size" if shape == size else f"resized from {shape[0]}x{shape[1]}")


def test_resize_is_linear_and_keeps_constant_images():
    rng = np.random.default_rng(1)
    a, b = (torch.from_numpy(rng.random((1, 3, 50, 70)).astype(np.float32)) for _ in range(2))
    size = (31, 90)
    torch.testing.assert_close(
        resize_images(2 * a - b, size), 2 * resize_images(a, size) - resize_images(b, size),
        atol=1e-5, rtol=0,
    )
    flat = torch.full((1, 3, 50, 70), 0.25)
    torch.testing.assert_close(resize_images(flat, size), torch.full((1, 3, *size), 0.25))


def test_large_images_are_resized_one_by_one(monkeypatch):
    monkeypatch.setattr(prepare, "MATRIX_RESIZE_SIDE", 32)  # the fallback path on a small image
    image = np.random.default_rng(2).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    got = ImagePreparation((20, 24))([image])[0]
    np.testing.assert_allclose(got[0].numpy(), _reference(image, (20, 24)), atol=1e-6, rtol=0)


def test_no_display_images_when_not_asked_and_normalisation_applies():
    image = np.random.default_rng(3).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    pre = ImagePreparation((16, 16), mean_std=parse_normalization("imagenet"))
    got, shown, _ = pre([image], display=False)
    assert shown == []
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in parse_normalization("imagenet"))
    torch.testing.assert_close(got[0], (torch.from_numpy(_reference(image, (16, 16))) - mean) / std)


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 4), (20, 20, 1)])
def test_images_that_are_not_rgb_are_refused(shape):
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) RGB"):
        ImagePreparation((16, 16))([np.zeros(shape, dtype=np.uint8)])
