"""Windows of the latent grid that the search refines one at a time (bounded memory at any size).

An image of up to SINGLE latents (a Kodak image is 48 x 32) is one window. A larger one is cut into cores
of CORE x CORE latents, each refined inside a window that adds MARGIN latents above and to the left, where
its neighbours were refined already: the context model reads those (it is causal), and the pixels there
still change with the core's latents (g_s reaches ~4 latents), so their distortion counts. The margin's own
latents are refined along but dropped. No margin below or right: it would cost (36/32)² more work per
megapixel again, for latents that their own window refines with that context anyway. Memory: a window of
(CORE + MARGIN)² = 1296 latents (0.33 MP) needs less than a Kodak image. Coordinates are in y latents and
multiples of 4, so that z (a quarter of y's resolution) splits with them.
"""

from __future__ import annotations

from dataclasses import dataclass

SINGLE = 48 * 48  # latents: images up to this area (768 x 768 pixels) are searched whole
CORE = 32
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
    return [((max(0, c0 - margin), min(n, c0 + core)), (c0, min(n, c0 + core))) for c0 in range(0, n, core)]


def windows(H: int, W: int, core: int | None = None, margin: int | None = None,
            single: int | None = None) -> list[Window]:
    """Row-major windows covering a y grid of H x W latents (H, W multiples of 4); CORE, MARGIN and SINGLE
    by default (read when called)."""
    core = CORE if core is None else core
    margin = MARGIN if margin is None else margin
    single = SINGLE if single is None else single
    if H % Z_RATIO or W % Z_RATIO or core % Z_RATIO or margin % Z_RATIO:
        raise ValueError("latent sizes, core and margin must be multiples of 4")
    if H * W <= single:
        return [Window((0, H), (0, W), (0, H), (0, W))]
    return [Window(r, c, cr, cc) for r, cr in _spans(H, core, margin) for c, cc in _spans(W, core, margin)]
