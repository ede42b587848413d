"""Split an image into overlapping tiles so inference memory is bounded by the tile, not the image.

Each tile is run with `pad` extra LR pixels of real context on every side (clipped at the image
border, where the untiled model sees the same border), and only its centre is kept. With a pad
at least the model's receptive-field radius the result equals the untiled one exactly; below
that the seam error decays quickly (see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from srd.engine.lanes import run_in_lanes


@dataclass(frozen=True)
class Tile:
    """One tile: `core` is the LR region it owns, `outer` the padded region it is run on."""

    core: tuple[slice, slice]
    outer: tuple[slice, slice]

    def core_in_output(self, scale: int) -> tuple[slice, slice]:
        """Where the core lands in the upscaled image."""
        rows, cols = self.core
        return slice(rows.start * scale, rows.stop * scale), slice(cols.start * scale, cols.stop * scale)

    def core_in_outer_output(self, scale: int) -> tuple[slice, slice]:
        """Where the core sits inside the upscaled padded tile."""
        rows, cols = self.core
        outer_rows, outer_cols = self.outer
        top = (rows.start - outer_rows.start) * scale
        left = (cols.start - outer_cols.start) * scale
        return (
            slice(top, top + (rows.stop - rows.start) * scale),
            slice(left, left + (cols.stop - cols.start) * scale),
        )


def plan_tiles(height: int, width: int, tile: int, pad: int) -> Iterator[Tile]:
    """Tiles covering a `height`×`width` image; `tile <= 0` means one tile for the whole image."""
    if tile <= 0:
        tile = max(height, width)
    for top in range(0, height, tile):
        bottom = min(top + tile, height)
        for left in range(0, width, tile):
            right = min(left + tile, width)
            yield Tile(
                core=(slice(top, bottom), slice(left, right)),
                outer=(
                    slice(max(0, top - pad), min(height, bottom + pad)),
                    slice(max(0, left - pad), min(width, right + pad)),
                ),
            )


def upscale_tiled(
    source: np.ndarray,
    target: np.ndarray,
    scale: int,
    run: Callable[[np.ndarray, int], np.ndarray],
    *,
    tile: int,
    pad: int,
    lanes: Callable[[], int] = lambda: 1,
    most_lanes: int = 1,
) -> int:
    """Fill `target` (source upscaled by `scale`) tile by tile, several tiles at once where `lanes` allows.

    Tiles own disjoint parts of `target`, so the order they finish in does not change the result.

    Args:
        source: H×W or H×W×C array the model reads.
        target: preallocated (H·scale)×(W·scale)[×C] array, written in place.
        run: maps a padded source tile and a lane number to its upscaled result (already in `target`'s
            dtype); calls on the same lane never overlap.
        tile: core tile side in LR pixels (0: whole image).
        pad: LR pixels of context added on each side.
        lanes: how many tiles may run at once, asked before each tile.
        most_lanes: upper bound on `lanes()` (the number of lanes `run` accepts).

    Returns:
        The most tiles that ran at once.
    """
    height, width = source.shape[:2]

    def fill(piece: Tile, lane: int) -> None:
        result = run(source[piece.outer], lane)
        target[piece.core_in_output(scale)] = result[piece.core_in_outer_output(scale)]

    return run_in_lanes(plan_tiles(height, width, tile, pad), fill, lanes, most_lanes)
