"""An attribute world: images whose attributes, and which of them decide identity, are known.

Every image shows a textured or plain background, two *identity objects* and
one *distractor object*, drawn anti-aliased with shading and a soft shadow at
random positions, sizes and angles. Its binary attributes
(:data:`ATTRIBUTE_NAMES`) say which objects and which background it shows:

- six identity-relevant attributes, one per identity object kind ("red
  disc", "striped disc", ...): an image's *identity* is its unordered pair of
  identity objects (:data:`IDENTITIES`, 15 identities);
- seven nuisance attributes: the distractor kind (three) and the background
  kind (four, textures from scikit-image's bundled images). They vary
  independently of identity, so an embedder trained on identities learns to
  ignore them.

Two images whose identity pairs share exactly one object have a known
explanation of what they have in common: that object's attribute
(:func:`attribute_world_pairs`). Everything is drawn from a seed at run time;
nothing is downloaded.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .samples import bundled_images

__all__ = [
    "ATTRIBUTE_NAMES",
    "RELEVANT",
    "IDENTITIES",
    "AttributeWorld",
    "AttributeWorldPairs",
    "attribute_world",
    "attribute_world_pairs",
]

#: Identity objects: (name, shape, colour or pattern).
_OBJECTS = (
    ("red disc", "disc", (0.86, 0.16, 0.14)),
    ("blue square", "square", (0.16, 0.32, 0.90)),
    ("green triangle", "triangle", (0.16, 0.72, 0.22)),
    ("yellow cross", "cross", (0.96, 0.84, 0.10)),
    ("striped disc", "disc", "stripes"),
    ("checkered diamond", "diamond", "checks"),
)
#: Distractor objects (nuisance).
_DISTRACTORS = (
    ("grey bar", "bar", (0.55, 0.55, 0.55)),
    ("white ring", "ring", (0.95, 0.95, 0.93)),
    ("brown ellipse", "ellipse", (0.52, 0.33, 0.16)),
)
#: Background kinds (nuisance): a scikit-image texture, or None for a plain gradient.
_BACKGROUNDS = (
    ("grass background", "grass"),
    ("gravel background", "gravel"),
    ("brick background", "brick"),
    ("plain background", None),
)

#: Names of the 13 binary attributes, in label order: identity objects, distractors, backgrounds.
ATTRIBUTE_NAMES: Tuple[str, ...] = tuple(
    name for name, *_ in _OBJECTS + _DISTRACTORS + _BACKGROUNDS
)
#: Which attributes decide identity (the first six).
RELEVANT: Tuple[bool, ...] = tuple(i < len(_OBJECTS) for i in range(len(ATTRIBUTE_NAMES)))
#: The identities: every unordered pair of identity objects, by attribute index.
IDENTITIES: Tuple[Tuple[int, int], ...] = tuple(itertools.combinations(range(len(_OBJECTS)), 2))

_N_OBJ, _N_DIS = len(_OBJECTS), len(_DISTRACTORS)


@dataclass
class AttributeWorld:
    """Images of the attribute world with their identities and attributes.

    Attributes:
        images (Tensor): ``(N, 3, S, S)`` float32 in [0, 1].
        identities (Tensor): ``(N,)`` int64, an index into :data:`IDENTITIES`.
        labels (Tensor): ``(N, A)`` float32 in {0, 1}, ``A = 13``: which
            attributes of :data:`ATTRIBUTE_NAMES` the image shows (exactly two
            identity objects, one distractor and one background).
        masks (Tensor or None): ``(N, A, S, S)`` bool, the pixels of each
            attribute the image shows (an object's pixels; for the background
            attribute, the pixels no object covers); all False for absent
            attributes. None unless asked for.
        attribute_names (tuple of str): :data:`ATTRIBUTE_NAMES`.
        relevant (Tensor): ``(A,)`` bool, :data:`RELEVANT`.
    """

    images: Tensor
    identities: Tensor
    labels: Tensor
    masks: Optional[Tensor]
    attribute_names: Tuple[str, ...] = ATTRIBUTE_NAMES
    relevant: Tensor = field(default_factory=lambda: torch.tensor(RELEVANT))

    def __len__(self) -> int:
        return int(self.identities.shape[0])

    def partners(self) -> Tensor:
        """``(N,)`` for each image, another image of its identity: the next one
        of that identity in order, cyclically (e.g. the reference of each
        image's saliency map when training an attribute head).

        Raises:
            ValueError: an identity has a single image.
        """
        out = torch.empty_like(self.identities)
        for identity in self.identities.unique().tolist():
            members = torch.nonzero(self.identities == identity).flatten()
            if len(members) < 2:
                raise ValueError(
                    f"identity {identity} has a single image; draw the images with "
                    "identities=[i % len(IDENTITIES) for i in range(n)] for at least two each"
                )
            out[members] = members.roll(-1)
        return out


@dataclass
class AttributeWorldPairs:
    """Pairs of attribute-world images whose identities share exactly one object.

    Attributes:
        first (AttributeWorld): The first image of each pair (``x1``).
        second (AttributeWorld): The second image of each pair (``x2``).
        shared (Tensor): ``(N,)`` int64, the attribute index of the one
            identity object both images show: the true explanation of what
            the pair has in common.
    """

    first: AttributeWorld
    second: AttributeWorld
    shared: Tensor

    def __len__(self) -> int:
        return int(self.shared.shape[0])

    @property
    def shared_nuisance(self) -> Tensor:
        """``(N,)`` bool: the two images also share a nuisance attribute (the
        distractor kind or the background kind)."""
        both = self.first.labels.bool() & self.second.labels.bool()
        return both[:, ~self.first.relevant].any(1)


def attribute_world(
    n: int,
    seed: int = 0,
    size: int = 64,
    identities: Optional[Sequence[int]] = None,
    masks: bool = False,
) -> AttributeWorld:
    r"""Draws ``n`` images of the attribute world.

    Each image: a background (one of four kinds, tinted with a random muted
    colour), the two objects of its identity and one random distractor, at
    random non-overlapping positions, radii of 6.5 to 9.5 px (at
    ``size=64``, scaled with ``size``), random angles and slightly jittered
    colours, with shading, a soft shadow and pixel noise (sigma 0.015).

    Args:
        n (int): Number of images.
        seed (int, optional): Seed of every random choice; the same seed gives
            the same images. The global random state is not used.
            Default: 0
        size (int, optional): Side ``S`` of the square images, >= 32.
            Default: 64
        identities (sequence of int, optional): The identity of each image
            (indices into :data:`IDENTITIES`), length ``n``.
            Default: None (drawn uniformly)
        masks (bool, optional): Also return the pixels of each attribute.
            Default: False

    Returns:
        AttributeWorld: images, identities, attribute labels (and masks).

    Raises:
        ValueError: ``n < 1``, ``size < 32`` or identities out of range or of
            the wrong length.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    if identities is None:
        ids = torch.randint(len(IDENTITIES), (n,), generator=generator)
    else:
        ids = torch.as_tensor(list(identities), dtype=torch.long)
        if ids.shape != (n,) or ((ids < 0) | (ids >= len(IDENTITIES))).any():
            raise ValueError(
                f"identities must be {n} integers in [0, {len(IDENTITIES)}), got {list(identities)!r}"
            )
    objects = [IDENTITIES[i] for i in ids.tolist()]
    return _render(objects, size, generator, masks, ids)


def attribute_world_pairs(
    n: int, seed: int = 0, size: int = 64, masks: bool = False
) -> AttributeWorldPairs:
    r"""``n`` pairs of images whose identities share exactly one object.

    For each pair an object ``a`` and two other distinct objects ``b`` and
    ``c`` are drawn; ``x1`` shows ``{a, b}``, ``x2`` shows ``{a, c}``, each
    with its own random distractor, background and layout (so nuisance
    attributes are shared by chance: the distractor kind with probability
    1/3, the background kind with 1/4). ``a`` is the known explanation of
    what the pair has in common.

    Args:
        n (int): Number of pairs.
        seed (int, optional): Seed; the same seed gives the same pairs.
            Default: 0
        size (int, optional): Image side, >= 32.
            Default: 64
        masks (bool, optional): Also return the pixels of each attribute.
            Default: False

    Returns:
        AttributeWorldPairs: ``first`` (``x1``), ``second`` (``x2``) and
        ``shared`` (the attribute index of the common object).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(_N_OBJ, generator=generator)[:3].tolist() for _ in range(n)]
    index = {pair: i for i, pair in enumerate(IDENTITIES)}
    ids1 = torch.tensor([index[tuple(sorted((a, b)))] for a, b, _ in picks])
    ids2 = torch.tensor([index[tuple(sorted((a, c)))] for a, _, c in picks])
    first = _render([(a, b) for a, b, _ in picks], size, generator, masks, ids1)
    second = _render([(a, c) for a, _, c in picks], size, generator, masks, ids2)
    return AttributeWorldPairs(first, second, torch.tensor([a for a, _, _ in picks]))


# --- rendering (batched: parameters are drawn per image, pixels per object kind) --------

_SPECS = _OBJECTS + _DISTRACTORS
_SHAPES = tuple(sorted({shape for _, shape, _ in _SPECS}))
_SHAPE_OF = torch.tensor([_SHAPES.index(shape) for _, shape, _ in _SPECS])
_PATTERNS = ("stripes", "checks")
#: per kind: 0 plain colour, 1 stripes, 2 checks
_PATTERN_OF = torch.tensor([_PATTERNS.index(look) + 1 if isinstance(look, str) else 0
                            for _, _, look in _SPECS])
_COLOUR_OF = torch.tensor([look if not isinstance(look, str) else (0.5, 0.5, 0.5)
                           for _, _, look in _SPECS])


@lru_cache(maxsize=None)
def _texture(name: str) -> Tensor:
    """A scikit-image texture, grey, slightly blurred (so that sampling it at a
    lower resolution does not alias): ``(1, 1, 512, 512)`` in [0, 1]."""
    grey = bundled_images((name,))[name][:1][None]
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    grey = F.conv2d(F.pad(grey, (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 5))
    return F.conv2d(F.pad(grey, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, 5, 1))


def _coords(size: int, cx: Tensor, cy: Tensor, angle: Tensor) -> Tuple[Tensor, Tensor]:
    """``(n, S, S)`` pixel-centre coordinates relative to each ``(cx, cy)``,
    rotated by ``-angle``."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    x = grid[None, None, :] - cx[:, None, None]
    y = grid[None, :, None] - cy[:, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return c * x + s * y, -s * x + c * y


def _box(x: Tensor, y: Tensor, hx: Tensor, hy: Tensor) -> Tensor:
    qx, qy = x.abs() - hx, y.abs() - hy
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, qy).clamp_max(0)


def _triangle(x: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """Signed distance to an equilateral triangle of circumradius ``r``, apex up."""
    k = math.sqrt(3.0)
    half = r * k / 2  # half the side
    x = x.abs() - half
    y = -y + half / k  # image rows grow downwards
    fold = x + k * y > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - torch.minimum(torch.maximum(x, -2 * half), torch.zeros_like(x))
    return -torch.sqrt(x**2 + y**2) * torch.sign(y)


def _sdf(shape: str, x: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """Signed distance (pixels, negative inside) to a shape of size ``r`` ((n, 1, 1))."""
    if shape == "disc":
        return torch.sqrt(x**2 + y**2) - r
    if shape == "square":
        return _box(x, y, 0.82 * r, 0.82 * r)
    if shape == "triangle":
        return _triangle(x, y, 1.1 * r)
    if shape == "cross":
        return torch.minimum(_box(x, y, r, 0.34 * r), _box(x, y, 0.34 * r, r))
    if shape == "diamond":
        return _box((x + y) / math.sqrt(2), (y - x) / math.sqrt(2), 0.75 * r, 0.75 * r)
    if shape == "ring":
        return (torch.sqrt(x**2 + y**2) - 0.72 * r).abs() - 0.26 * r
    if shape == "ellipse":
        return (torch.sqrt((x / r) ** 2 + (y / (0.55 * r)) ** 2) - 1) * 0.55 * r
    if shape == "bar":
        return _box(x, y, 1.05 * r, 0.3 * r)
    raise ValueError(f"unknown shape {shape!r}")


def _shape_distance(kind: Tensor, x: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """Signed distance of each image's object (kinds ``(n,)``), one shape at a time."""
    out = torch.empty_like(x)
    shapes = _SHAPE_OF[kind]
    for index, shape in enumerate(_SHAPES):
        rows = torch.nonzero(shapes == index).flatten()
        if len(rows):
            out[rows] = _sdf(shape, x[rows], y[rows], r[rows, None, None])
    return out


def _backgrounds(kind: Tensor, size: int, generator: torch.Generator) -> Tensor:
    n = kind.shape[0]
    tint = torch.rand(n, 3, generator=generator) * 0.35 + 0.3  # muted colours
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    side = torch.rand(n, generator=generator) * (160 - 96) + 96  # texture crop, in pixels
    corner = torch.rand(n, 2, generator=generator)
    x, _ = _coords(size, torch.full((n,), size / 2), torch.full((n,), size / 2), angle)
    shade = 0.9 + 0.35 * x / size  # plain: a linear gradient in a random direction
    for index, (_, texture) in enumerate(_BACKGROUNDS):
        rows = torch.nonzero(kind == index).flatten()
        if texture is None or not len(rows):
            continue
        source = _texture(texture)
        scale = side[rows] / source.shape[-1]
        centre = (corner[rows] * (1 - scale[:, None])) * 2 - (1 - scale[:, None])
        theta = torch.zeros(len(rows), 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = scale, scale
        theta[:, :, 2] = centre
        grid = F.affine_grid(theta, [len(rows), 1, size, size], align_corners=False)
        crop = F.grid_sample(source.expand(len(rows), -1, -1, -1), grid, align_corners=False)[:, 0]
        mean = crop.mean((1, 2), keepdim=True)
        std = crop.std((1, 2), keepdim=True).clamp_min(1e-6)
        shade[rows] = 0.9 + 0.22 * ((crop - mean) / std).clamp(-2.0, 2.0)
    return (tint[:, :, None, None] * shade[:, None]).clamp(0, 1)


def _layout(radii: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``(n, K, 2)`` centres of non-overlapping discs of ``radii`` ``(n, K)`` inside
    the image: rejection sampling of the images whose discs still overlap."""
    n, k = radii.shape
    margin = 1.05 * radii + 1
    gap = 2.0 * size / 64
    centres = torch.empty(n, k, 2)
    todo = torch.arange(n)
    for _ in range(10_000):
        u = torch.rand(len(todo), k, 2, generator=generator)
        low = margin[todo, :, None]
        centres[todo] = low + u * (size - 2 * low)
        c, r = centres[todo], radii[todo]
        distance = torch.cdist(c, c)
        needed = 1.1 * (r[:, :, None] + r[:, None, :]) + gap
        overlap = (distance <= needed) & ~torch.eye(k, dtype=torch.bool)
        todo = todo[overlap.flatten(1).any(1)]
        if not len(todo):
            return centres
    raise RuntimeError("could not place the objects; use a larger size")


#: Images rendered at a time (the tensors of a chunk stay small enough for the cache).
_CHUNK = 128


def _render(
    objects: List[Tuple[int, int]],
    size: int,
    generator: torch.Generator,
    with_masks: bool,
    ids: Tensor,
) -> AttributeWorld:
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    parts = [_render_chunk(objects[i : i + _CHUNK], size, generator, with_masks)
             for i in range(0, len(objects), _CHUNK)]
    images, labels, masks = (list(t) for t in zip(*parts))
    return AttributeWorld(
        torch.cat(images), ids, torch.cat(labels), torch.cat(masks) if with_masks else None
    )


def _render_chunk(
    objects: List[Tuple[int, int]], size: int, generator: torch.Generator, with_masks: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    n, n_attr = len(objects), len(ATTRIBUTE_NAMES)
    distractor = torch.randint(_N_DIS, (n,), generator=generator)
    background = torch.randint(len(_BACKGROUNDS), (n,), generator=generator)
    kinds = torch.cat([torch.tensor(objects, dtype=torch.long).view(n, 2),
                       (_N_OBJ + distractor)[:, None]], 1)  # (n, 3)
    order = torch.argsort(torch.rand(n, 3, generator=generator), 1)  # drawing order
    radii = (torch.rand(n, 3, generator=generator) * 3 + 6.5) * (size / 64)
    angles = torch.rand(n, 3, generator=generator) * 2 * math.pi
    angles[_SHAPE_OF[kinds] == _SHAPES.index("disc")] = 0.0
    jitter = (torch.rand(n, 3, 3, generator=generator) - 0.5) * 0.12
    periods = (torch.rand(n, 3, generator=generator) * 0.15 + 0.45) * radii
    centres = _layout(radii, size, generator)
    images = _backgrounds(background, size, generator)
    masks = torch.zeros(n, n_attr, size, size, dtype=torch.bool) if with_masks else None
    covered = torch.zeros(n, size, size)
    rows = torch.arange(n)
    for step in range(3):
        slot = order[:, step]
        kind, r, angle = kinds[rows, slot], radii[rows, slot], angles[rows, slot]
        cx, cy = centres[rows, slot, 0], centres[rows, slot, 1]
        offset = 0.12 * r  # a soft shadow, down and to the right
        sx, sy = _coords(size, cx + offset, cy + offset, angle)
        shadow = (0.5 - _shape_distance(kind, sx, sy, r) / 2.5).clamp(0, 1) * 0.35
        images.mul_(1 - shadow[:, None])
        x, y = _coords(size, cx, cy, angle)
        alpha = (0.5 - _shape_distance(kind, x, y, r)).clamp(0, 1)
        period = periods[rows, slot][:, None, None]
        pattern = _PATTERN_OF[kind][:, None, None]
        phase = torch.where(
            pattern == 1,
            torch.cos(2 * math.pi * x / period),
            torch.cos(math.pi * x / period) * torch.cos(math.pi * y / period),
        )
        grey = (0.5 + 0.42 * torch.tanh(3 * phase))[:, None]
        flat = (_COLOUR_OF[kind] + jitter[rows, slot]).clamp(0, 1)[:, :, None, None]
        colour = torch.where(pattern[:, None] > 0, grey, flat)
        gx, gy = _coords(size, cx, cy, torch.zeros(n))  # light from the top left
        light = 1 + 0.16 * (-(gx + gy) / (r[:, None, None] * math.sqrt(2))).clamp(-1, 1)
        body = (colour * light[:, None]).clamp(0, 1)
        images.mul_(1 - alpha[:, None]).add_(alpha[:, None] * body)
        covered = torch.maximum(covered, alpha)
        if masks is not None:
            masks[rows, kind] = alpha > 0.5
    labels = torch.zeros(n, n_attr)
    labels.scatter_(1, kinds, 1.0)
    background_attr = _N_OBJ + _N_DIS + background
    labels[rows, background_attr] = 1.0
    if masks is not None:
        masks[rows, background_attr] = covered <= 0.5
    images.add_(torch.randn(images.shape, generator=generator) * 0.015)
    return images.clamp_(0, 1), labels, masks
