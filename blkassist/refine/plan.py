"""Refinement plans: pure functions of (canvas size, tile, overlap, pass, batching).

A refinement pass covers its canvas with square windows of `tile` pixels. Window origins lie
on the 16-pixel grid of Flux's packed latents, so every window's latents sit on one
canvas-wide latent grid and overlapping windows can start from the same noise (noise.py).
Neighbours share at least `overlap` pixels: windows step by the largest multiple of 16 that
is at most tile - overlap. Each pass of an SR step offsets that lattice by its own fraction
of the step (0, 1/2, 1/4, 3/4, 1/8, ...: the coherence pass takes the next one), so no two
passes blend on the same line; a window flush with each border completes the cover (the
last may overhang the far border by less than 16 pixels: it is read mirrored there, and the
overhang is never blended).

Windows are numbered row-major and grouped `tiles_per_job` to a tile job; the output canvas
is written in square blocks, grouped `blocks_per_job` to a blend job. Jobs are named by the
range they cover (blkassist.batches, as the SR path's tile jobs). The workflow evaluates
these plans when it builds the DAG; the jobs evaluate the same functions.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from dataclasses import dataclass

from blkassist.batches import Batches

BLOCK = 512  # output block side: one zarr chunk of the refined canvas
SIZE_MULTIPLE = 16  # Flux: VAE factor 8 x 2x2 latent packing; window origins lie on it


def pass_phase(number: int) -> float:
    """Lattice offset of the `number`-th pass (1-based) of an SR step, as a fraction of the
    window step: the van der Corput sequence 0, 1/2, 1/4, 3/4, 1/8, ..., each new pass's
    seams as far as possible from all earlier ones'."""
    index, phase, weight = number - 1, 0.0, 0.5
    while index:
        index, bit = divmod(index, 2)
        phase += bit * weight
        weight /= 2
    return phase


def lattice_offset(number: int, units: int) -> int:
    """The `number`-th pass's lattice offset in 16-pixel units of a step of `units`: the
    free unit nearest its phase, so passes get distinct offsets while there are enough."""
    taken: set[int] = set()
    unit = 0
    for k in range(1, number + 1):
        desired = pass_phase(k) * units
        free = [u for u in range(units) if u not in taken] or list(range(units))
        unit = min(free, key=lambda u: (min(abs(u - desired), units - abs(u - desired)), u))
        taken.add(unit)
    return unit


def grid_positions(length: int, size: int, overlap: int, number: int = 1) -> tuple[int, ...]:
    """Starts of the windows of pass `number` of a canvas (windows of `size` covering
    [0, length)): multiples of 16, neighbours sharing at least `overlap` pixels, the lattice
    offset by the pass's phase of its step, plus a window at 0 and one ending within 16
    pixels past `length`."""
    if length <= size:
        return (0,)
    stride = (size - overlap) // SIZE_MULTIPLE * SIZE_MULTIPLE
    if stride < SIZE_MULTIPLE:
        raise ValueError(f"tile {size} with overlap {overlap} leaves no 16-pixel step")
    last = math.ceil((length - size) / SIZE_MULTIPLE) * SIZE_MULTIPLE
    offset = lattice_offset(number, stride // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return (0, *range(offset or stride, last, stride), last)


def seam_centres(positions: tuple[int, ...], size: int) -> tuple[int, ...]:
    """Middle of the overlap between each pair of neighbouring windows."""
    return tuple((a + size + b) // 2 for a, b in itertools.pairwise(positions))


def axis_weights(positions: tuple[int, ...], size: int, index: int, band: int) -> list[float]:
    """Blend profile of window `index` along one axis: 1 inside, a raised-cosine ramp `band`
    pixels wide (at most the overlap) centred in its overlap with each neighbour
    (complementary ramps of two neighbours sum to one), 0 beyond it, flat at the canvas
    border. A wide overlap (next to a border window) cross-fades only over the band."""
    start = positions[index]
    profile = [1.0] * size
    if index > 0:
        _fade(profile, positions[index - 1] + size - start, band, rising=True)
    if index + 1 < len(positions):
        _fade(profile, start + size - positions[index + 1], band, rising=False)
    return profile


def _fade(profile: list[float], shared: int, band: int, rising: bool) -> None:
    """Multiply the `shared` pixels at one end of `profile` by a ramp of `band` pixels
    centred in them (rising from the window's start, or falling to its end)."""
    width = min(band, shared)
    width += (shared - width) % 2  # centred exactly, so two neighbours' ramps mirror
    before = (shared - width) // 2  # pixels of the shared part ahead of the ramp
    size = len(profile)
    for k in range(shared):
        t = min(max((k - before + 0.5) / width, 0.0), 1.0)
        at = k if rising else size - 1 - k
        profile[at] *= _ramp(t)


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

    @property
    def phase(self) -> float:
        """This pass's lattice offset, as a fraction of the window step."""
        return pass_phase(self.number)

    def _positions(self, length: int, size: int) -> tuple[int, ...]:
        return grid_positions(length, size, self.overlap, self.number)

    def earlier(self) -> list[RefinePass]:
        """The passes before this one on the same canvas (same SR step), in order."""
        return [
            RefinePass(self.step, number, False, self.width, self.height, self.tile,
                       self.overlap, self.tiles_per_job, self.blocks_per_job)
            for number in range(1, self.number)
        ]  # fmt: skip

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
    def tile_jobs(self) -> Batches:
        """Tile jobs: `tiles_per_job` windows each, named by their window range."""
        return Batches(self.window_count, self.tiles_per_job)

    @property
    def batch_count(self) -> int:
        return self.tile_jobs.count

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

    def batch_range(self, batch: int) -> tuple[int, int]:
        """[first, stop) window indices of tile batch `batch`."""
        windows = self.tile_jobs.range(batch)
        return windows.start, windows.stop

    def batch_windows(self, batch: int) -> list[Window]:
        return self.windows_between(*self.batch_range(batch))

    def windows_between(self, first: int, stop: int) -> list[Window]:
        return [self.window(i) for i in range(first, stop)]

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
    def blend_jobs(self) -> Batches:
        """Blend jobs: `blocks_per_job` output blocks each, named by their block range."""
        return Batches(self.block_count, self.blocks_per_job, "blend job")

    @property
    def blend_count(self) -> int:
        return self.blend_jobs.count

    def block_box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of output block `index` (row-major)."""
        row, column = divmod(index, self.block_columns)
        x0, y0 = column * BLOCK, row * BLOCK
        return x0, y0, min(x0 + BLOCK, self.width), min(y0 + BLOCK, self.height)

    def blend_blocks(self, blend: int) -> range:
        return self.blend_jobs.range(blend)

    def window_ids(self, blocks: range) -> set[int]:
        """Windows that the blocks are composed from."""
        return {w.index for block in blocks for w in self.covering(*self.block_box(block))}

    def covering(self, x0: int, y0: int, x1: int, y1: int) -> list[Window]:
        """Windows that overlap the box."""
        columns = [c for c, x in enumerate(self.xs) if x < x1 and x + self.window_width > x0]
        rows = [r for r, y in enumerate(self.ys) if y < y1 and y + self.window_height > y0]
        return [self.window(r * self.columns + c) for r in rows for c in columns]

    def blend_batches(self, blend: int) -> range:
        """Tile batches whose windows a blend job reads (a contiguous superset)."""
        return self.block_batches(self.blend_blocks(blend))

    def block_batches(self, blocks: range) -> range:
        """Tile batches whose windows the blocks are composed from (a contiguous superset)."""
        top = self.block_box(blocks[0])[1]
        bottom = self.block_box(blocks[-1])[3]
        rows = [r for r, y in enumerate(self.ys) if y < bottom and y + self.window_height > top]
        jobs = self.tile_jobs
        return range(
            jobs.job_of(rows[0] * self.columns), jobs.job_of((rows[-1] + 1) * self.columns - 1) + 1
        )

    # -- where a window counts (re-rolls, QA) -------------------------------------------
    def footprint(self, window: Window) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the canvas where the window's blend weight is not zero: the
        only pixels a change of this window can change."""
        return self._extent(window, lambda weight: weight > 0)

    def interior(self, window: Window) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the canvas where the window alone makes the pixels (blend
        weight 1): outside it, its neighbours share every pixel. Along an axis where
        neighbours overlap it everywhere, its cell there."""
        return self._extent(window, lambda weight: weight >= 1, fallback=self.cell(window))

    def _extent(self, window: Window, keep, fallback=None) -> tuple[int, int, int, int]:
        spans = []
        for axis, (positions, size, index, start, length) in enumerate((
            (self.xs, self.window_width, window.column, window.x, self.width),
            (self.ys, self.window_height, window.row, window.y, self.height),
        )):  # fmt: skip
            profile = axis_weights(positions, size, index, self.overlap)
            kept = [k for k, weight in enumerate(profile) if keep(weight)]
            if kept:
                spans.append((start + kept[0], min(start + kept[-1] + 1, length)))
            else:
                spans.append((fallback[axis], fallback[axis + 2]))
        (x0, x1), (y0, y1) = spans
        return x0, y0, x1, y1

    def cell(self, window: Window) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the window's cell: the canvas between the middles of its
        overlaps with its neighbours, where it weighs most (cells tile the canvas)."""
        xs = (0, *self.seams_x, self.width)
        ys = (0, *self.seams_y, self.height)
        return xs[window.column], ys[window.row], xs[window.column + 1], ys[window.row + 1]

    def window_at(self, x: float, y: float) -> Window:
        """The window whose cell holds canvas point (x, y)."""
        column = bisect.bisect_right(self.seams_x, x)
        row = bisect.bisect_right(self.seams_y, y)
        return self.window(row * self.columns + column)

    def windows_in(self, x0: float, y0: float, x1: float, y1: float) -> list[Window]:
        """Windows whose cells meet the box (x0, y0)-(x1, y1)."""
        first = self.window_at(max(x0, 0), max(y0, 0))
        last = self.window_at(min(x1, self.width) - 1e-9, min(y1, self.height) - 1e-9)
        return [
            self.window(row * self.columns + column)
            for row in range(first.row, last.row + 1)
            for column in range(first.column, last.column + 1)
        ]

    def block_ids(self, box: tuple[int, int, int, int]) -> list[int]:
        """Output blocks that meet `box` (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box
        columns = range(max(x0, 0) // BLOCK, (min(x1, self.width) - 1) // BLOCK + 1)
        rows = range(max(y0, 0) // BLOCK, (min(y1, self.height) - 1) // BLOCK + 1)
        return [row * self.block_columns + column for row in rows for column in columns]

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
