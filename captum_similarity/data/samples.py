"""Images that ship with scikit-image, as tensors."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import Tensor

#: Bundled scikit-image images (loadable offline) used to train the demo embedder.
TRAINING_IMAGES = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "camera", "coins", "moon", "page", "text",
    "clock", "grass", "gravel", "brick", "colorwheel",
)


def image_to_tensor(image: np.ndarray) -> Tensor:
    """``(H, W)`` or ``(H, W, C)`` uint8/float array to ``(3, H, W)`` float32 in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {arr.shape}")
    arr = arr[..., :3]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def bundled_images(names: Tuple[str, ...] = TRAINING_IMAGES) -> Dict[str, Tensor]:
    """scikit-image's bundled images by name, each ``(3, H, W)`` in [0, 1]."""
    return {name: image_to_tensor(getattr(skdata, name)()) for name in names}


def stereo_pair() -> Tuple[Tensor, Tensor, Tensor]:
    """scikit-image's rectified stereo pair of a motorcycle.

    Returns:
        tuple: left and right views ``(3, 500, 741)`` in [0, 1], and the
        disparity map ``(500, 741)`` (pixels; a point at column ``c`` of the
        left view is at ``c - disparity`` in the right view; NaN/inf where
        unknown).
    """
    left, right, disparity = skdata.stereo_motorcycle()
    return image_to_tensor(left), image_to_tensor(right), torch.from_numpy(disparity.astype(np.float32))


def resize_crop(image: Tensor, top: int, left: int, height: int, width: int, size: Tuple[int, int]) -> Tensor:
    """The ``(C, height, width)`` crop of ``image`` at (top, left), resized anti-aliased to ``size``."""
    crop = image[None, :, top : top + height, left : left + width]
    return F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def stereo_crops(
    n: int, size: int = 48, crop: int = 128, seed: int = 0
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Corresponding square crops of the two stereo views.

    Each left crop is paired with the right crop shifted by the median
    ground-truth disparity inside it, so both show the same scene content
    from the two cameras.

    Args:
        n (int): Number of pairs.
        size (int, optional): Output side in pixels.
            Default: 48
        crop (int, optional): Crop side in the original views.
            Default: 128
        seed (int, optional): Seed of the crop positions.
            Default: 0

    Returns:
        tuple: left crops ``(n, 3, size, size)``, right crops, and the
        ``(n, 3)`` integer boxes ``(top, left, shift)``.
    """
    left, right, disparity = stereo_pair()
    g = torch.Generator().manual_seed(seed)
    h, w = left.shape[1:]
    lefts, rights, boxes = [], [], []
    while len(lefts) < n:
        top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        col = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        d = disparity[top : top + crop, col : col + crop]
        d = d[torch.isfinite(d)]
        if d.numel() < crop * crop // 2:
            continue
        shift = int(round(float(d.median())))
        if col - shift < 0:
            continue
        lefts.append(resize_crop(left, top, col, crop, crop, (size, size)))
        rights.append(resize_crop(right, top, col - shift, crop, crop, (size, size)))
        boxes.append((top, col, shift))
    return torch.stack(lefts), torch.stack(rights), torch.tensor(boxes)
