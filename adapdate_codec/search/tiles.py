"""Windows of the latent grid that the search refines one at a time (bounded memory at any size).

A window is a core (whose refined latents are kept) plus a margin on each side that has a neighbour
(refined too, for context, then dropped): g_s's receptive field reaches about 4 latents, the context model
2. Coordinates are in y latents and multiples of 4, so that z (a quarter of y's resolution) splits with them.
"""

from __future__ import annotations

from dataclasses import dataclass

CORE = 48  # latents: a Kodak image (48 x 32) is one window, with no margin
MARGIN = 4
Z_RATIO = 4


@dataclass(frozen=True)
class Window:
    rows: tuple[int, int]  # the window, in y latents
    cols: tuple[int, int]
    core_rows: tuple[int, int]
    core_cols: tuple[int, int]

    def z(self, span: tuple[int, int]) -> slice:
        return slice(span[0] // Z_RATIO, span[1] // Z_RATIO)

    def inner(self, core: tuple[int, int], outer: tuple[int, int], ratio: int = 1) -> slice:
        """The core's position inside the window, at 1/ratio of y's resolution."""
        return slice((core[0] - outer[0]) // ratio, (core[1] - outer[0]) // ratio)


def _spans(n: int, core: int, margin: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    out = []
    for c0 in range(0, n, core):
        c1 = min(n, c0 + core)
        out.append(((max(0, c0 - margin), min(n, c1 + margin)), (c0, c1)))
    return out


def windows(H: int, W: int, core: int = CORE, margin: int = MARGIN) -> list[Window]:
    """Row-major windows covering a y grid of H x W latents (H, W multiples of 4)."""
    if H % Z_RATIO or W % Z_RATIO or core % Z_RATIO or margin % Z_RATIO:
        raise ValueError("latent sizes, core and margin must be multiples of 4")
    return [Window(r, c, cr, cc) for r, cr in _spans(H, core, margin) for c, cc in _spans(W, core, margin)]
