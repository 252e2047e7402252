"""Figures of explanations, headless (matplotlib ``Figure`` objects, saved to files).

- :func:`visualize_pair` (and :func:`to_visualizer_arrays`): both images of
  a pair with each method's maps, drawn with ``captum.attr.visualization``;
- :func:`visualize_matches`: PAIR-X's matched cells and per-match maps;
- :func:`visualize_links` (and :func:`strongest_links`): BiLRP's strongest
  patch-to-patch links;
- :func:`visualize_attributes`: a SANE attribute explanation (the pair, its
  saliency maps, the explaining attribute's heatmaps and the ranking).

Pixel coordinates are ``(x, y)`` throughout; grid cells ``(row, col)``.
"""

from .attributes import visualize_attributes
from .links import strongest_links, visualize_links
from .matches import visualize_matches
from .pair import to_visualizer_arrays, visualize_pair

__all__ = [
    "visualize_pair",
    "to_visualizer_arrays",
    "visualize_matches",
    "visualize_links",
    "strongest_links",
    "visualize_attributes",
]
