"""Images as given -> what a model takes, and what it sees, said in words.

:class:`ImagePreparation` turns RGB arrays into a model's input batch:
dlib's face chips for dlib's face model, else a resize to a fixed size and
an optional per-channel normalisation. It also returns the images as the
model sees them (before normalisation, for display) and a note per image
(aligned, resized from what, ...), as the command line's report shows them.
"""

from __future__ import annotations

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
]

MeanStd = Tuple[Tuple[float, ...], Tuple[float, ...]]

#: Named per-channel normalisations: ``(mean, std)``.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}

#: Longest side of images kept for display.
DISPLAY_SIDE = 512


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

    def __call__(self, images: List[np.ndarray]) -> Tuple[Tensor, List[np.ndarray], List[str]]:
        r"""Prepares a list of ``(H, W, 3)`` arrays (uint8, or float in [0, 1]).

        Returns:
            tuple: the model's input ``(N, 3, H, W)`` float32, the images as
            the model sees them (uint8 ``(H, W, 3)``, before normalisation)
            and one note per image.
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
            from skimage.transform import resize

            rows, notes = [], []
            for image in images:
                arr = (
                    image.astype(np.float32) / 255.0
                    if image.dtype == np.uint8
                    else image.astype(np.float32)
                )
                if tuple(arr.shape[:2]) != self.size:
                    arr = resize(arr, self.size, order=1, anti_aliasing=True).astype(np.float32)
                    notes.append(f"resized from {image.shape[0]}x{image.shape[1]}")
                else:
                    notes.append("used at its size")
                rows.append(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))))
            seen = torch.stack(rows)
        inputs = seen
        if self.mean_std is not None:
            mean = torch.tensor(self.mean_std[0]).view(1, 3, 1, 1)
            std = torch.tensor(self.mean_std[1]).view(1, 3, 1, 1)
            inputs = (seen - mean) / std
        display = [display_image(s.permute(1, 2, 0).numpy()) for s in seen]
        return inputs.float(), display, notes
