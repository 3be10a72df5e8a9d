"""Refinement plans: pure functions of (canvas size, tile, overlap, batching).

A refinement pass covers its canvas with square windows of `tile` pixels that overlap by at
least `overlap` pixels, evenly spaced so the last window ends at the canvas edge (every
window has the same size, so windows batch together and see the same token count). The
coherence pass centres its windows on the seams of the regular grid (half a tile offset),
adding a window at each border, so every earlier seam lies in the middle of a window.

Windows are numbered row-major and grouped `tiles_per_job` to a tile job; the output canvas
is written in square blocks, grouped `blocks_per_job` to a blend job. The workflow
evaluates these plans when it builds the DAG; the jobs evaluate the same functions.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from dataclasses import dataclass

BLOCK = 512  # output block side: one zarr chunk of the refined canvas
SIZE_MULTIPLE = 16  # Flux: VAE factor 8 x 2x2 latent packing


def regular_positions(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Starts of evenly spaced windows of `size` covering [0, length), neighbours sharing at
    least `overlap` pixels; the first starts at 0 and the last ends at `length`."""
    if length <= size:
        return (0,)
    count = math.ceil((length - overlap) / (size - overlap))
    return tuple(round(i * (length - size) / (count - 1)) for i in range(count))


def seam_centres(positions: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Middle of the overlap between each pair of neighbouring windows."""
    return tuple((a + size + b) // 2 for a, b in itertools.pairwise(positions))


def coherence_positions(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Windows centred on the regular grid's seams, plus one flush with each border."""
    regular = regular_positions(length, size, overlap)
    if len(regular) == 1:
        return regular
    centred = {min(max(c - size // 2, 0), length - size) for c in seam_centres(regular, size)}
    return tuple(sorted(centred | {0, length - size}))


def axis_weights(positions: tuple[int, ...], size: int, index: int) -> list[float]:
    """Blend profile of window `index` along one axis: 1 inside, a raised-cosine ramp over
    its overlap with each neighbour (complementary ramps of two neighbours sum to one),
    never zero, and flat at the canvas border."""
    start = positions[index]
    left = positions[index - 1] + size - start if index > 0 else 0
    right = start + size - positions[index + 1] if index + 1 < len(positions) else 0
    profile = []
    for k in range(size):
        weight = 1.0
        if k < left:
            weight *= _ramp((k + 0.5) / left)
        if size - 1 - k < right:
            weight *= _ramp((size - 1 - k + 0.5) / right)
        profile.append(weight)
    return profile


def _ramp(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * t)


@dataclass(frozen=True)
class Window:
    """A refinement window in the coordinates of its pass's canvas."""

    index: int
    row: int
    column: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class RefinePass:
    """One refinement pass over a canvas of `width` x `height` (the SR step's output)."""

    step: int  # the SR step whose output it refines
    number: int  # 1-based within the step; the coherence pass comes last
    coherence: bool
    width: int
    height: int
    tile: int
    overlap: int
    tiles_per_job: int
    blocks_per_job: int

    @property
    def name(self) -> str:
        return f"{self.step}.{self.number}"

    @property
    def window_width(self) -> int:
        return min(self.tile, self.width)

    @property
    def window_height(self) -> int:
        return min(self.tile, self.height)

    @functools.cached_property
    def xs(self) -> tuple[int, ...]:
        return self._positions(self.width, self.window_width)

    @functools.cached_property
    def ys(self) -> tuple[int, ...]:
        return self._positions(self.height, self.window_height)

    def _positions(self, length: int, size: int) -> tuple[int, ...]:
        pick = coherence_positions if self.coherence else regular_positions
        return pick(length, size, self.overlap)

    @property
    def columns(self) -> int:
        return len(self.xs)

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def window_count(self) -> int:
        return self.columns * self.rows

    @property
    def batch_count(self) -> int:
        return math.ceil(self.window_count / self.tiles_per_job)

    def window(self, index: int) -> Window:
        if not 0 <= index < self.window_count:
            raise IndexError(f"window {index} outside a plan of {self.window_count}")
        row, column = divmod(index, self.columns)
        return Window(
            index,
            row,
            column,
            self.xs[column],
            self.ys[row],
            self.window_width,
            self.window_height,
        )

    def batch_windows(self, batch: int) -> list[Window]:
        if not 0 <= batch < self.batch_count:
            raise IndexError(f"batch {batch} outside a plan of {self.batch_count} batches")
        first = batch * self.tiles_per_job
        last = min(first + self.tiles_per_job, self.window_count)
        return [self.window(i) for i in range(first, last)]

    # -- output blocks and blend jobs ---------------------------------------------------
    @property
    def block_columns(self) -> int:
        return math.ceil(self.width / BLOCK)

    @property
    def block_rows(self) -> int:
        return math.ceil(self.height / BLOCK)

    @property
    def block_count(self) -> int:
        return self.block_columns * self.block_rows

    @property
    def blend_count(self) -> int:
        return math.ceil(self.block_count / self.blocks_per_job)

    def block_box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of output block `index` (row-major)."""
        row, column = divmod(index, self.block_columns)
        x0, y0 = column * BLOCK, row * BLOCK
        return x0, y0, min(x0 + BLOCK, self.width), min(y0 + BLOCK, self.height)

    def blend_blocks(self, blend: int) -> range:
        if not 0 <= blend < self.blend_count:
            raise IndexError(f"blend job {blend} outside a plan of {self.blend_count}")
        first = blend * self.blocks_per_job
        return range(first, min(first + self.blocks_per_job, self.block_count))

    def covering(self, x0: int, y0: int, x1: int, y1: int) -> list[Window]:
        """Windows that overlap the box."""
        columns = [c for c, x in enumerate(self.xs) if x < x1 and x + self.window_width > x0]
        rows = [r for r, y in enumerate(self.ys) if y < y1 and y + self.window_height > y0]
        return [self.window(r * self.columns + c) for r in rows for c in columns]

    def blend_batches(self, blend: int) -> range:
        """Tile batches whose windows a blend job reads (a contiguous superset)."""
        blocks = self.blend_blocks(blend)
        top = self.block_box(blocks[0])[1]
        bottom = self.block_box(blocks[-1])[3]
        rows = [r for r, y in enumerate(self.ys) if y < bottom and y + self.window_height > top]
        first = rows[0] * self.columns // self.tiles_per_job
        last = ((rows[-1] + 1) * self.columns - 1) // self.tiles_per_job
        return range(first, last + 1)

    # -- seams (for QA) -------------------------------------------------------------------
    @property
    def seams_x(self) -> tuple[int, ...]:
        return seam_centres(self.xs, self.window_width)

    @property
    def seams_y(self) -> tuple[int, ...]:
        return seam_centres(self.ys, self.window_height)

    def geometry(self) -> dict:
        """What defines the pixels (batching left out)."""
        return {
            "step": self.step,
            "number": self.number,
            "coherence": self.coherence,
            "width": self.width,
            "height": self.height,
            "tile": self.tile,
            "overlap": self.overlap,
        }


def window_seed(seed: int, mural: str, step: int, number: int, window: int) -> int:
    """Deterministic 63-bit seed of one window: a hash, so neighbours are uncorrelated and
    the seed does not depend on batching or on which windows already ran."""
    text = f"{seed}:{mural}:{step}:{number}:{window}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1
