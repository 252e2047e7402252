"""Images as given -> what a model takes, and what it sees, said in words.

:class:`ImagePreparation` turns RGB arrays into a model's input batch:
dlib's face chips for dlib's face model, else a resize to a fixed size and
an optional per-channel normalisation. It also returns the images as the
model sees them (before normalisation, for display) and a note per image
(aligned, resized from what, ...), as the command line's report shows them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..models.face_preprocess import dlib_available, face_chips

__all__ = [
    "ImagePreparation",
    "NORMALIZATIONS",
    "parse_normalization",
    "display_image",
    "DISPLAY_SIDE",
    "resize_images",
]

MeanStd = Tuple[Tuple[float, ...], Tuple[float, ...]]

#: Named per-channel normalisations: ``(mean, std)``.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}

#: Longest side of images kept for display.
DISPLAY_SIDE = 512

#: Images whose longer side is at most this many pixels are resized with
#: two matrices per shape (:func:`resize_images`); larger ones one by one.
MATRIX_RESIZE_SIDE = 2048


def parse_normalization(text: str) -> Optional[MeanStd]:
    r"""``(mean, std)`` per channel from ``"imagenet"``, ``"none"`` (None),
    ``"MEAN,STD"`` (the same for the three channels) or six numbers (three
    means, then three standard deviations).

    Raises:
        ValueError: any other text, or a standard deviation that is not positive.
    """
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        values = [values[0]] * 3 + [values[1]] * 3
    if len(values) != 6:
        raise ValueError(
            f"--normalize must be imagenet, none, MEAN,STD or three means then three stds, got {text!r}"
        )
    if min(values[3:]) <= 0:
        raise ValueError(f"--normalize: standard deviations must be positive, got {values[3:]}")
    return tuple(values[:3]), tuple(values[3:])


def display_image(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """An ``(H, W, 3)`` image (uint8, or float in [0, 1]) as uint8, downscaled
    to at most ``side`` pixels (anti-aliased)."""
    arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    scale = side / max(arr.shape[:2])
    if scale < 1:
        from skimage.transform import resize

        shape = (max(1, round(arr.shape[0] * scale)), max(1, round(arr.shape[1] * scale)))
        arr = resize(arr, shape, order=1, anti_aliasing=True)
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


@lru_cache(maxsize=16)
def _axis_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)``: scikit-image's anti-aliased linear resize along one
    axis, as a matrix (its columns: the resized unit vectors)."""
    from skimage.transform import resize

    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float32)
    # resizing only the first axis of the identity: the other keeps its size,
    # so it is neither smoothed nor interpolated
    matrix = resize(np.eye(n_in), (n_out, n_in), order=1, anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))


def resize_images(images: Tensor, size: Sequence[int]) -> Tensor:
    r"""Resizes a batch as ``skimage.transform.resize(image, size, order=1,
    anti_aliasing=True)`` does each image, to float rounding.

    That resize (a Gaussian smoothing when shrinking, then linear
    interpolation, both with mirrored edges) is linear and separable: it is
    applied as ``rows @ image @ columns.T``, the two matrices made by
    scikit-image from the identity once per shape and kept (a matrix
    product instead of a filter and an interpolation per image).

    Args:
        images (Tensor): ``(N, C, H, W)`` float32, all of one size.
        size (sequence of int): ``(H', W')``.

    Returns:
        Tensor: ``(N, C, H', W')`` float32.
    """
    rows = _axis_matrix(int(images.shape[-2]), int(size[0]))
    columns = _axis_matrix(int(images.shape[-1]), int(size[1]))
    return torch.matmul(torch.matmul(rows, images.float()), columns.T)


class ImagePreparation:
    r"""Prepares RGB images for a model.

    Args:
        size (tuple of int): ``(H, W)`` of the model's input.
        faces (bool, optional): Make dlib's face chips (``face_chips(align="auto")``:
            aligned on five landmarks with dlib, else padded and resized) of
            side ``size[0]`` instead of resizing.
            Default: False
        mean_std (tuple, optional): Per-channel ``(mean, std)`` applied after
            resizing (see :func:`parse_normalization`).
            Default: None

    Attributes:
        description (str): What is done to every image, in words.
    """

    def __init__(
        self, size: Sequence[int], faces: bool = False, mean_std: Optional[MeanStd] = None
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.faces = faces
        self.mean_std = mean_std
        if faces:
            how = (
                "face chips as dlib makes them (5-point landmark alignment, dlib.get_face_chip, "
                "padding 0.25)"
                if dlib_available()
                else "padded to a square by repeating edge pixels, then resized (dlib is not installed: "
                "no alignment)"
            )
            self.description = (
                f"{how}, {self.size[0]}x{self.size[1]} RGB in [0, 1]; the model normalises itself"
            )
        else:
            norm = (
                "no normalisation"
                if mean_std is None
                else (f"normalised with mean {list(mean_std[0])} and std {list(mean_std[1])}")
            )
            self.description = (
                f"resized to {self.size[0]}x{self.size[1]} (aspect ratio not kept), "
                f"RGB in [0, 1], {norm}"
            )

    def __call__(
        self, images: List[np.ndarray], display: bool = True
    ) -> Tuple[Tensor, List[np.ndarray], List[str]]:
        r"""Prepares a list of ``(H, W, 3)`` arrays (uint8, or float in [0, 1]).

        Args:
            images (list of ndarray): The images.
            display (bool, optional): Also return the images as the model
                sees them (False: an empty list, for runs that only explain).
                Default: True

        Returns:
            tuple: the model's input ``(N, 3, H, W)`` float32, the images as
            the model sees them (uint8 ``(H, W, 3)``, before normalisation;
            empty when ``display`` is False) and one note per image.
        """
        if self.faces:
            seen, detected = face_chips(
                images, align="auto", size=self.size[0], return_detected=True
            )
            aligned = dlib_available()
            notes = [
                (
                    "aligned on a detected face"
                    if d
                    else "no face detected: landmarks searched in the whole image"
                )
                if aligned
                else "padded to a square and resized"
                for d in detected.tolist()
            ]
        else:
            seen = torch.empty(len(images), 3, *self.size)
            notes = []
            for k, image in enumerate(images):
                if image.ndim != 3 or image.shape[2] != 3:
                    raise ValueError(
                        f"image {k} must be (H, W, 3) RGB, got shape {tuple(image.shape)} "
                        "(captum_similarity.data.files.load_image reads files as RGB)"
                    )
                arr = torch.from_numpy(
                    image.astype(np.float32) / 255.0
                    if image.dtype == np.uint8
                    else image.astype(np.float32)
                ).permute(2, 0, 1)
                if tuple(arr.shape[1:]) == self.size:
                    seen[k] = arr
                    notes.append("used at its size")
                    continue
                notes.append(f"resized from {image.shape[0]}x{image.shape[1]}")
                if max(arr.shape[1:]) <= MATRIX_RESIZE_SIDE:
                    seen[k] = resize_images(arr[None], self.size)[0]
                else:  # building matrices would cost more than resizing this image
                    from skimage.transform import resize

                    seen[k] = torch.from_numpy(
                        resize(arr.permute(1, 2, 0).numpy(), self.size, order=1, anti_aliasing=True)
                        .astype(np.float32)
                        .transpose(2, 0, 1)
                    )
        inputs = seen
        if self.mean_std is not None:
            mean = torch.tensor(self.mean_std[0]).view(1, 3, 1, 1)
            std = torch.tensor(self.mean_std[1]).view(1, 3, 1, 1)
            inputs = (seen - mean) / std
        shown = [display_image(s.permute(1, 2, 0).numpy()) for s in seen] if display else []
        return inputs.float(), shown, notes
