"""Face chips for dlib's face network: alignment with dlib, or pad-and-resize without it.

dlib's network was trained on 150x150 chips aligned on five facial landmarks
(``dlib.get_face_chip`` with padding 0.25). :func:`face_chips` makes such
chips when dlib is installed (``pip install dlib-bin``, a 4 MB wheel, or
``dlib``) and the landmark model is available from the ``faces`` extra;
otherwise it pads each image to a square by repeating its edge pixels and
resizes it. On the ORL faces the aligned chips verify far better (see
``docs/face-verification.md``).
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from skimage.transform import resize
from torch import Tensor

from .dlib_files import FACE_SIZE, dlib_model_path

__all__ = ["face_chips", "pad_to_square", "dlib_available", "FACE_ALIGNMENTS"]

#: Accepted values of ``align`` in :func:`face_chips`.
FACE_ALIGNMENTS = ("auto", "dlib", "pad_resize", "resize")

#: dlib's 5-point landmark model, shipped by the ``faces`` extra.
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"

#: Padding around the face that dlib's face network was trained with.
CHIP_PADDING = 0.25

#: With ``upsample=None`` the detector doubles an image until its shorter
#: side reaches this length (at most twice); dlib's detector finds faces of
#: about 80 pixels and more.
MIN_DETECTION_SIDE = 320

ImageLike = Any


def dlib_available() -> bool:
    """Whether dlib can be imported (``pip install dlib-bin``)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def _as_rgb_uint8(image: ImageLike, index: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from grey, grey+channel, RGB or RGBA input."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3] if arr.shape[2] == 4 else arr
    elif arr.ndim != 2:
        raise ValueError(
            f"image {index} must be (H, W) grey or (H, W, 3) RGB, got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image {index} is empty: shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"image {index} has NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"image {index} is float but not in [0, 1]; pass uint8 0..255 instead")
        arr = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise TypeError(f"image {index} must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pads ``(H, W, ...)`` to a centred square by repeating the edge pixels.

    When the difference is odd, the extra row or column goes to the bottom or
    right.
    """
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="edge")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    out = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


#: dlib's detector and landmark model, one pair per thread: a detector keeps
#: the image it scans in itself, so two threads must not share one.
_THREAD_MODELS = threading.local()


def _dlib_models() -> Tuple[Any, Any]:
    """``(detector, predictor)`` of the calling thread (made on its first call)."""
    models = getattr(_THREAD_MODELS, "models", None)
    if models is None:
        try:
            import dlib
        except ImportError as e:
            raise ImportError(
                "face alignment needs dlib: `pip install dlib-bin` (or dlib); "
                "use align='pad_resize' without it"
            ) from e
        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(str(dlib_model_path(LANDMARKS_FILE)))
        models = _THREAD_MODELS.models = (detector, predictor)
    return models


def _default_upsample(image: np.ndarray) -> int:
    side, times = min(image.shape[:2]), 0
    while side < MIN_DETECTION_SIDE and times < 2:
        side, times = side * 2, times + 1
    return times


def _dlib_chip(image: np.ndarray, size: int, upsample: Optional[int]) -> Tuple[np.ndarray, bool]:
    detector, predictor = _dlib_models()  # raises a clear ImportError without dlib
    import dlib

    times = _default_upsample(image) if upsample is None else upsample
    faces = list(detector(image, times))
    if faces:
        box = max(faces, key=lambda r: r.area())
    else:
        box = dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
    shape = predictor(image, box)
    return dlib.get_face_chip(image, shape, size=size, padding=CHIP_PADDING), bool(faces)


def face_chips(
    images: Union[ImageLike, Sequence[ImageLike]],
    align: str = "auto",
    size: int = FACE_SIZE,
    upsample: Optional[int] = None,
    return_detected: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""Turns face images into the chips dlib's face network takes.

    Args:
        images (array or sequence of arrays): One image or a list of images
            of any sizes: ``(H, W)`` grey (repeated to RGB), ``(H, W, 3)`` RGB
            or ``(H, W, 4)`` RGBA, uint8 0..255 or float in ``[0, 1]``.
        align (str, optional): How to make a chip:

            - ``"dlib"``: detect the largest face with dlib's HOG detector,
              find its five landmarks and extract the aligned chip as dlib
              does (``dlib.get_face_chip``, padding 0.25). When no face is
              detected, the landmarks are searched in the whole image,
              taken as a face crop (see ``return_detected``). Needs dlib and
              the ``faces`` extra.
            - ``"pad_resize"``: pad to a square by repeating the edge pixels,
              then resize (bilinear, anti-aliased). No dependency.
            - ``"resize"``: resize as is (the aspect ratio changes).
            - ``"auto"``: ``"dlib"`` when dlib is installed, else
              ``"pad_resize"``.

            Default: ``"auto"``
        size (int, optional): Chip side.
            Default: 150
        upsample (int, optional): How many times dlib's detector doubles
            the image before searching. None doubles until the shorter side
            is at least 320 pixels, at most twice (faces filling a 92x112
            image need it; a 512x512 photo needs none).
            Default: None
        return_detected (bool, optional): Also return which chips were
            aligned on a detected face.
            Default: False

    Returns:
        Tensor or tuple: float32 chips ``(N, 3, size, size)``, RGB in
        ``[0, 1]``; with ``return_detected``, also a bool tensor ``(N,)``,
        True where dlib detected the face (always False without dlib
        alignment).

    Raises:
        ImportError: ``align="dlib"`` without dlib or the ``faces`` extra.
        ValueError: unknown ``align``, an empty list, or an image that is
            not a 2-D grey or RGB(A) array, is empty (no pixels) or has NaN
            or infinite values.

    Example::

        >>> from skimage import data
        >>> chips = face_chips([data.astronaut()])   # (1, 3, 150, 150)
    """
    if align not in FACE_ALIGNMENTS:
        raise ValueError(f"align must be one of {', '.join(FACE_ALIGNMENTS)}, got {align!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        batch = [images]
    if not batch:
        raise ValueError("images is empty")
    if align == "auto":
        align = "dlib" if dlib_available() else "pad_resize"
    chips: List[np.ndarray] = []
    detected: List[bool] = []
    for i, image in enumerate(batch):
        rgb = _as_rgb_uint8(image, i)
        if align == "dlib":
            chip, found = _dlib_chip(rgb, size, upsample)
        else:
            chip = _resize(pad_to_square(rgb) if align == "pad_resize" else rgb, size)
            found = False
        chips.append(chip)
        detected.append(found)
    out = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if return_detected:
        return out, torch.tensor(detected, dtype=torch.bool)
    return out
