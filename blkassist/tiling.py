"""Tile plans: pure functions of (source size, scales, tile, pad, tiles per job).

The workflow evaluates these when it builds the DAG, so a dry-run lists every tile-batch
job; the jobs evaluate the same functions to find their own tiles.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from blkassist.batches import Batches

PASS_SCALES = (4, 3, 2)  # a model pass enlarges 2x-4x


@dataclass(frozen=True)
class Tile:
    """A tile in the coordinates of its pass's input canvas."""

    index: int
    x: int
    y: int
    width: int
    height: int

    def padded(self, pad: int, canvas_width: int, canvas_height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile grown by `pad`, clipped to the canvas.

        Clipping (not mirroring) keeps the model's view at the canvas border identical to a
        whole-image pass, which zero-pads there too.
        """
        return (
            max(self.x - pad, 0),
            max(self.y - pad, 0),
            min(self.x + self.width + pad, canvas_width),
            min(self.y + self.height + pad, canvas_height),
        )


@dataclass(frozen=True)
class PassPlan:
    """One enlargement pass: input canvas -> output canvas `scale` times larger."""

    number: int  # 1-based; canvas 0 is the ingested source
    scale: int
    input_width: int
    input_height: int
    tile: int
    # Scheduling only: how many tiles one Snakemake job takes. Never part of what defines
    # the pass's pixels (see geometry()), so re-batching keeps every finished tile.
    tiles_per_job: int = 1

    @property
    def output_width(self) -> int:
        return self.input_width * self.scale

    @property
    def output_height(self) -> int:
        return self.input_height * self.scale

    @property
    def columns(self) -> int:
        return math.ceil(self.input_width / self.tile)

    @property
    def rows(self) -> int:
        return math.ceil(self.input_height / self.tile)

    @property
    def tile_count(self) -> int:
        return self.columns * self.rows

    @property
    def batches(self) -> Batches:
        """Tile jobs: `tiles_per_job` tiles each, named by their tile range."""
        return Batches(self.tile_count, self.tiles_per_job)

    @property
    def batch_count(self) -> int:
        return self.batches.count

    @property
    def output_chunk(self) -> int:
        """Output chunk side: one tile's output, so each tile writes exactly one chunk."""
        return self.tile * self.scale

    def geometry(self) -> dict:
        """The fields that define the pass's pixels: everything but the batching."""
        return {
            "number": self.number,
            "scale": self.scale,
            "input_width": self.input_width,
            "input_height": self.input_height,
            "tile": self.tile,
        }

    def tile_at(self, index: int) -> Tile:
        if not 0 <= index < self.tile_count:
            raise IndexError(f"tile {index} outside a plan of {self.tile_count} tiles")
        row, column = divmod(index, self.columns)
        x, y = column * self.tile, row * self.tile
        return Tile(
            index,
            x,
            y,
            min(self.tile, self.input_width - x),
            min(self.tile, self.input_height - y),
        )

    def batch_range(self, batch: int) -> tuple[int, int]:
        """(first, stop) tile indices of `batch`: what its job is responsible for."""
        tiles = self.batches.range(batch)
        return tiles.start, tiles.stop

    def tiles_between(self, first: int, stop: int) -> list[Tile]:
        return [self.tile_at(i) for i in range(first, stop)]

    def batch_tiles(self, batch: int) -> list[Tile]:
        return self.tiles_between(*self.batch_range(batch))


@dataclass(frozen=True)
class MuralPlan:
    source_width: int
    source_height: int
    passes: tuple[PassPlan, ...]
    final_width: int
    final_height: int

    @property
    def canvas_width(self) -> int:
        """Width of the last pass's canvas (before the final fractional resize)."""
        return self.passes[-1].output_width

    @property
    def canvas_height(self) -> int:
        return self.passes[-1].output_height

    @property
    def needs_final_resize(self) -> bool:
        return (self.final_width, self.final_height) != (self.canvas_width, self.canvas_height)


def pass_scales(total_scale: float) -> tuple[int, ...]:
    """Fewest passes of 2x-4x whose product covers `total_scale`, the smallest such product.

    Exact integer factorisations win (6 -> 3x2, 16 -> 4x4); otherwise the remainder is a
    downscale in the final assembly (2.5 -> 3, then x0.833).
    """
    if total_scale <= 1:
        raise ValueError(f"scale must be greater than 1, got {total_scale}")
    count = max(1, math.ceil(math.log(total_scale, 4) - 1e-9))
    options = (
        tuple(sorted(combo, reverse=True))
        for combo in itertools.product(PASS_SCALES, repeat=count)
        if math.prod(combo) >= total_scale - 1e-9
    )
    return min(set(options), key=lambda scales: (math.prod(scales), [-s for s in scales]))


def plan_mural(
    source_width: int,
    source_height: int,
    *,
    scale: float | None = None,
    target_long_side: int | None = None,
    tile: int = 512,
    tiles_per_job: int = 16,
) -> MuralPlan:
    if (scale is None) == (target_long_side is None):
        raise ValueError("give exactly one of scale and target_long_side")
    if target_long_side is not None:
        long_side = max(source_width, source_height)
        scale = target_long_side / long_side
        if source_width >= source_height:
            final = (target_long_side, round(source_height * scale))
        else:
            final = (round(source_width * scale), target_long_side)
    else:
        final = (round(source_width * scale), round(source_height * scale))
    passes = []
    width, height = source_width, source_height
    for number, factor in enumerate(pass_scales(scale), start=1):
        passes.append(PassPlan(number, factor, width, height, tile, tiles_per_job))
        width, height = width * factor, height * factor
    return MuralPlan(source_width, source_height, tuple(passes), *final)
