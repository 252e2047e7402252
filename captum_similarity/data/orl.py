"""The ORL (AT&T) face database layout: 40 identities x 10 grey 92x112 images.

The data is not part of the package: pass the folder that holds ``s1`` ..
``s40`` (in this project, ``../shared/data/orl_faces``, whose README credits
the Olivetti Research Laboratory; some of its subjects do not look like the
published ORL set, so treat it as an identity-labelled face set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from skimage import io
from skimage.transform import resize
from torch import Tensor


@dataclass
class OrlFaces:
    """ORL images and identity labels.

    Attributes:
        images (Tensor): ``(M, 1, H, W)`` float32 in [0, 1] (H, W = 112, 92
            unless resized).
        labels (Tensor): ``(M,)`` int64 subject index, ``s1`` -> 0.
        files (tuple of str): Relative path of each image, e.g. ``"s1/1.pgm"``.
    """

    images: Tensor
    labels: Tensor
    files: Tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: Tensor) -> "OrlFaces":
        """The images where the boolean ``mask`` (M,) is True."""
        idx = torch.nonzero(mask, as_tuple=False).flatten().tolist()
        return OrlFaces(self.images[mask], self.labels[mask], tuple(self.files[i] for i in idx))


def load_orl_faces(
    root: Union[str, Path], size: Optional[Tuple[int, int]] = None
) -> OrlFaces:
    r"""Loads the ORL faces from ``root``.

    Args:
        root (str or Path): Folder with subfolders ``s1`` .. ``s40`` of
            ``1.pgm`` .. ``10.pgm``.
        size (tuple of int, optional): ``(H, W)`` to resize every image to
            (anti-aliased).
            Default: None (native 112 x 92)

    Returns:
        OrlFaces: 400 images ordered by subject, then image number.

    Raises:
        FileNotFoundError: ``root`` does not hold the ORL folders.
    """
    root = Path(root)
    subjects = sorted(
        (p for p in root.glob("s*") if p.is_dir() and p.name[1:].isdigit()),
        key=lambda p: int(p.name[1:]),
    )
    if not subjects:
        raise FileNotFoundError(f"no ORL subject folders s1..s40 under {root}")
    images, labels, files = [], [], []
    for subject in subjects:
        for path in sorted(subject.glob("*.pgm"), key=lambda p: int(p.stem)):
            img = io.imread(path).astype(np.float32) / 255.0
            if size is not None:
                img = resize(img, size, anti_aliasing=True).astype(np.float32)
            images.append(img)
            labels.append(int(subject.name[1:]) - 1)
            files.append(f"{subject.name}/{path.name}")
    return OrlFaces(
        torch.from_numpy(np.stack(images))[:, None],
        torch.tensor(labels, dtype=torch.int64),
        tuple(files),
    )


def identity_split(faces: OrlFaces, n_train: int = 30) -> Tuple[OrlFaces, OrlFaces]:
    """Splits by identity: subjects ``s1 .. s{n_train}`` train, the rest held out.

    The held-out identities never appear in training, as in re-identification
    benchmarks.
    """
    ids = torch.unique(faces.labels)
    if not 0 < n_train < len(ids):
        raise ValueError(f"n_train must be between 1 and {len(ids) - 1}, got {n_train}")
    train = faces.labels < ids[n_train]
    return faces.subset(train), faces.subset(~train)
