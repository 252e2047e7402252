"""Lists of image pairs for dataset-scale runs.

:func:`read_pairs_csv` reads a ``PAIRS.csv`` (``image1,image2[,label]``,
paths relative to the file); :func:`draw_identity_pairs` draws same- and
different-identity pairs reproducibly from a folder with one sub-folder of
images per identity (as the ORL faces); :func:`select_pairs` is the drawing
itself, on identity labels.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor

from .files import IMAGE_SUFFIXES

__all__ = [
    "ImagePair",
    "read_pairs_csv",
    "draw_identity_pairs",
    "select_pairs",
    "parse_pair_counts",
    "LABELS",
]

#: The labels a pair may carry (empty: unknown).
LABELS = ("same", "different")


@dataclass(frozen=True)
class ImagePair:
    """A pair of image files.

    Attributes:
        image1 (str): The first image as listed (relative to the list).
        image2 (str): The second image as listed.
        path1 (str): Where the first image is read from.
        path2 (str): Where the second image is read from.
        label (str): ``"same"``, ``"different"`` or ``""`` (unknown).
    """

    image1: str
    image2: str
    path1: str
    path2: str
    label: str = ""


def read_pairs_csv(path: Union[str, Path]) -> List[ImagePair]:
    r"""Reads a list of pairs.

    Args:
        path (str or Path): A CSV file with a header row naming the columns
            ``image1``, ``image2`` and optionally ``label`` (``same``,
            ``different`` or empty); image paths are relative to the file's
            folder (or absolute).

    Returns:
        list of ImagePair: the pairs in the file's order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, an empty image entry or an unknown
            label, naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in reader.fieldnames or []]
        missing = [c for c in ("image1", "image2") if c not in fields]
        if missing:
            raise ValueError(
                f"{path} must start with a header line 'image1,image2[,label]'; "
                f"missing column(s) {', '.join(missing)} (found {fields})"
            )
        pairs = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row["image1"] or not row["image2"]:
                raise ValueError(f"{path}, line {line}: empty image1 or image2")
            label = row.get("label", "")
            if label not in LABELS + ("",):
                raise ValueError(
                    f"{path}, line {line}: label must be same, different or empty, got {label!r}"
                )
            pairs.append(
                ImagePair(
                    row["image1"],
                    row["image2"],
                    str(path.parent / row["image1"]),
                    str(path.parent / row["image2"]),
                    label,
                )
            )
    if not pairs:
        raise ValueError(f"{path} lists no pairs")
    return pairs


def parse_pair_counts(text: str) -> Tuple[int, int]:
    """``(same, different)`` from ``"same:N,different:M"`` (either may be left out).

    Raises:
        ValueError: any other text.
    """
    counts: Dict[str, int] = {"same": 0, "different": 0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(same|different):(\d+)", part)
        if not match:
            raise ValueError(f"--pairs takes same:N,different:M, got {text!r}")
        counts[match.group(1)] = int(match.group(2))
    if counts["same"] + counts["different"] == 0:
        raise ValueError(f"--pairs asks for no pair: {text!r}")
    return counts["same"], counts["different"]


def select_pairs(
    labels: Tensor, n_same: int, n_other: int, seed: int
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Indices of same- and different-identity pairs, drawn reproducibly.

    Same-identity pairs are spread over the identities in turn (a random
    order of identities, each with its pairs in random order); different-
    identity pairs are random draws of two images of different identities.

    Args:
        labels (Tensor): ``(M,)`` identity of each image.
        n_same (int): Same-identity pairs.
        n_other (int): Different-identity pairs.
        seed (int): Seed of the draw.

    Returns:
        tuple: ``(i, j, same)``: ``n_same + n_other`` indices of the first and
        second images, and whether each pair is of one identity (the
        same-identity pairs first).

    Raises:
        ValueError: more same-identity pairs than there are, or
            different-identity pairs asked of a single identity.
    """
    g = torch.Generator().manual_seed(seed)
    per_identity = []
    for ident in torch.unique(labels):
        idx = torch.nonzero(labels == ident).flatten()
        pairs = torch.combinations(idx, 2)
        per_identity.append(pairs[torch.randperm(len(pairs), generator=g)])
    per_identity = [
        per_identity[k] for k in torch.randperm(len(per_identity), generator=g).tolist()
    ]
    available = sum(len(p) for p in per_identity)
    if n_same > available:
        raise ValueError(f"{n_same} same-identity pairs asked, {available} exist")
    same = []
    k = 0
    while len(same) < n_same:  # identities in turn, skipping those with no pairs left
        ident, depth = k % len(per_identity), k // len(per_identity)
        if depth < len(per_identity[ident]):
            same.append(per_identity[ident][depth])
        k += 1
    if n_other > 0 and len(torch.unique(labels)) < 2:
        raise ValueError("different-identity pairs need at least two identities")
    other = []
    while len(other) < n_other:
        i, j = torch.randint(len(labels), (2,), generator=g)
        if labels[i] != labels[j]:
            other.append(torch.stack([i, j]))
    pairs = torch.stack(same + other) if same or other else torch.empty(0, 2, dtype=torch.long)
    is_same = torch.tensor([True] * len(same) + [False] * len(other))
    return pairs[:, 0], pairs[:, 1], is_same


def draw_identity_pairs(
    folder: Union[str, Path], n_same: int, n_different: int, seed: int = 0
) -> List[ImagePair]:
    r"""Pairs drawn from a folder of identities.

    Args:
        folder (str or Path): One sub-folder per identity, holding its image
            files (suffixes :data:`~captum_similarity.data.files.IMAGE_SUFFIXES`);
            sub-folders are taken in natural order (``s2`` before ``s10``).
        n_same (int): Same-identity pairs.
        n_different (int): Different-identity pairs.
        seed (int, optional): Seed of the draw (:func:`select_pairs`).
            Default: 0

    Returns:
        list of ImagePair: image paths relative to ``folder``, labelled.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: no identity sub-folder with images, or more pairs asked
            than :func:`select_pairs` can draw.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"identity folder not found: {folder}")
    files: List[Path] = []
    labels: List[int] = []
    identities = sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=_natural,
    )
    for k, ident in enumerate(identities):
        images = sorted(
            (p for p in ident.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural,
        )
        files.extend(images)
        labels.extend([k] * len(images))
    if not files:
        raise ValueError(
            f"{folder} has no identity sub-folders with images (one folder per identity)"
        )
    i, j, same = select_pairs(torch.tensor(labels), n_same, n_different, seed)
    out = []
    for a, b, s in zip(i.tolist(), j.tolist(), same.tolist()):
        r1, r2 = files[a].relative_to(folder).as_posix(), files[b].relative_to(folder).as_posix()
        out.append(ImagePair(r1, r2, str(files[a]), str(files[b]), "same" if s else "different"))
    return out


def _natural(path: Path) -> List[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]

