"""Figures of explanations, headless (matplotlib ``Figure`` objects, saved to files).

- :func:`visualize_pair` (and :func:`to_visualizer_arrays`): both images of
  a pair with each method's maps, one colour scale per method, a colorbar;
- :func:`visualize_matches`: PAIR-X's matched cells and per-match maps;
  :func:`visualize_match_consistency`: how well the top matches agree with
  one affine map;
- :func:`visualize_links` (and :func:`strongest_links`): BiLRP's strongest
  patch-to-patch links;
- :func:`visualize_insertion_deletion`: insertion and deletion curves;
- :func:`visualize_ranking`: a query and its best ranked gallery items.

Every figure says which pair it shows and how its maps were normalised, has
a colorbar or legend, and draws a warning on the panel of a map that is all
zeros. Pixel coordinates are ``(x, y)`` throughout; grid cells ``(row, col)``.
"""

from .curves import visualize_insertion_deletion
from .links import strongest_links, visualize_links
from .matches import visualize_match_consistency, visualize_matches
from .pair import to_visualizer_arrays, visualize_pair
from .ranking import visualize_ranking

__all__ = [
    "visualize_pair",
    "to_visualizer_arrays",
    "visualize_matches",
    "visualize_match_consistency",
    "visualize_links",
    "strongest_links",
    "visualize_insertion_deletion",
    "visualize_ranking",
]
