"""Images from files, folders and the samples that ship with the install.

:func:`read_image` reads one image file (PNG, JPEG, PGM/PPM, TIFF, BMP, ...
through scikit-image) as an RGB array; :func:`gallery_files` lists the images
of a folder; :func:`sample_image` returns an image that ships with the
install by name (``sample:NAME`` on the command line), so that examples run
offline without any file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from .pairs import astronaut_pair
from .samples import TRAINING_IMAGES

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLE_PREFIX",
    "read_image",
    "gallery_files",
    "sample_image",
    "sample_names",
    "load_image",
]

#: File suffixes :func:`gallery_files` takes for images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".bmp", ".gif")

#: How an image that ships with the install is named on the command line.
SAMPLE_PREFIX = "sample:"

#: ``(rows, cols)`` of the cameraman's head in scikit-image's ``camera()``.
CAMERAMAN_HEAD = (slice(50, 210), slice(130, 290))

_SAMPLES = {
    "astronaut": "scikit-image's astronaut photo (Eileen Collins, NASA), 512x512 RGB",
    "astronaut-altered": "the astronaut's face mirrored, rotated 12 degrees and darkened "
    "(gamma 1.6), 200x200 RGB: the same person",
    "cameraman": "the head of scikit-image's cameraman (camera(), a different person), "
    "160x160 grey",
}


def sample_names() -> Dict[str, str]:
    """``{name: description}`` of the images :func:`sample_image` knows: three
    faces and scikit-image's bundled photos."""
    names = dict(_SAMPLES)
    names.update(
        {n: f"scikit-image's bundled image data.{n}()" for n in TRAINING_IMAGES if n not in names}
    )
    return names


def sample_image(name: str) -> np.ndarray:
    r"""An image that ships with the install, by name.

    Args:
        name (str): One of :func:`sample_names`: ``"astronaut"``,
            ``"astronaut-altered"`` (the same face, altered), ``"cameraman"``
            (another person's face) or a bundled scikit-image photo
            (``"coffee"``, ``"chelsea"``, ...).

    Returns:
        numpy.ndarray: ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    from skimage import data

    if name == "astronaut-altered":
        image = astronaut_pair()[1]
    elif name == "cameraman":
        image = data.camera()[CAMERAMAN_HEAD]
    elif name in sample_names():
        image = getattr(data, name)()
    else:
        raise ValueError(f"unknown sample image {name!r}; samples are {', '.join(sample_names())}")
    return _as_rgb(image, f"sample {name}")


def read_image(path: Union[str, Path]) -> np.ndarray:
    r"""Reads an image file as an RGB array.

    Args:
        path (str or Path): An image file scikit-image can read (PNG, JPEG,
            PGM/PPM, TIFF, BMP, GIF's first frame, ...).

    Returns:
        numpy.ndarray: ``(H, W, 3)``, uint8 for 8-bit files, float32 in
        ``[0, 1]`` for 16-bit and float files; grey images are repeated to
        three channels, an alpha channel is dropped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image scikit-image can read, or not a
            2-D grey or colour image (e.g. a volume).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    from skimage import io

    try:
        image = io.imread(path)
    except Exception as err:  # the readers raise many types for a bad file
        raise ValueError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from err
    if image.ndim == 4 and path.suffix.lower() == ".gif":
        image = image[0]
    return _as_rgb(image, str(path))


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]  # drop alpha
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name} is not a 2-D grey or colour image: array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = np.iinfo(arr.dtype).max
        return (arr.astype(np.float64) / top).astype(np.float32)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / max(hi - lo, 1e-12)
    return arr


def gallery_files(folder: Union[str, Path]) -> List[Path]:
    r"""The image files of a folder and its subfolders, sorted by path.

    Args:
        folder (str or Path): A folder.

    Returns:
        list of Path: files whose suffix is in :data:`IMAGE_SUFFIXES`, hidden
        files and folders left out.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {folder}")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the gallery folder {folder}"
        )
    return files


def load_image(source: Union[str, Path]) -> Tuple[str, np.ndarray]:
    """``(name, RGB array)`` of an image file or a ``sample:NAME``; the name is
    the source as given."""
    text = str(source)
    if text.startswith(SAMPLE_PREFIX):
        return text, sample_image(text[len(SAMPLE_PREFIX) :])
    return text, read_image(text)
