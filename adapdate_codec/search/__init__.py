"""Encoder-side latent search (`--effort`): better latents for the same decoder.

The decoder is the standard: a file made at any effort is an ordinary `.adpd` file of the same format,
decoded by the same decoder. Only the encoder works harder: it refines the analysis transform's latents
(y, z) by gradient descent on the model's own rate-distortion objective (sga.py), tile by tile for large
images (tiles.py), and keeps whichever of the refined and the plain latents costs less when measured with
the real entropy coder and the real synthesis (refine.py). Levels 0-9 map to schedules in levels.py.
"""

from adapdate_codec.search.levels import LEVELS, MAX_EFFORT, Level, level
from adapdate_codec.search.refine import SearchResult, search_latents

__all__ = ["LEVELS", "MAX_EFFORT", "Level", "SearchResult", "level", "search_latents"]
