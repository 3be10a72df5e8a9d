"""Tiled upscaling of one batch of tiles from an input canvas into an output canvas.

Each tile is read with `pad` pixels of context, upscaled, cropped back to its own area
and written as exactly one output chunk. Finished tiles are appended to a progress log,
so a batch killed halfway redoes only the tiles it had not finished.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blkassist.tiling import PassPlan, Tile

log = logging.getLogger(__name__)


class ProgressLog:
    """Append-only record of finished tiles, one file per batch in a shared folder.

    Reading the whole folder means a re-batched plan (tiles_per_job changed) still skips
    tiles that an earlier batching finished.
    """

    def __init__(self, folder: str | os.PathLike, batch: int):
        self.folder = Path(folder)
        self.path = self.folder / f"batch-{batch}.tiles"

    def finished(self) -> set[int]:
        done: set[int] = set()
        if not self.folder.is_dir():
            return done
        for record in self.folder.glob("batch-*.tiles"):
            # Only whole lines count: a last line without its newline was torn by a crash
            # (full disk, power loss) and may name a tile that was never written ("13" of
            # "130").
            for line in record.read_text().split("\n")[:-1]:
                if line.strip().isdigit():
                    done.add(int(line))
        return done

    def torn(self) -> set[int]:
        """Indices named by torn last lines (what a crash left half-written)."""
        torn: set[int] = set()
        for record in self.folder.glob("batch-*.tiles") if self.folder.is_dir() else []:
            tail = record.read_text().split("\n")[-1]
            if tail.strip().isdigit():
                torn.add(int(tail))
        return torn

    def mark(self, tiles: Iterable[int]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            handle.seek(0)
            recorded = handle.read()
            if recorded and not recorded.endswith(b"\n"):
                # Drop a torn last line, or the next index would be appended to it.
                handle.truncate(recorded.rfind(b"\n") + 1)
            handle.write("".join(f"{index}\n" for index in tiles).encode())
            handle.flush()
            os.fsync(handle.fileno())


def forward_groups(tiles: list[Tile], plan: PassPlan, pad: int, size: int) -> list[list[Tile]]:
    """Consecutive tiles with equal padded shapes, at most `size` per forward pass.

    The grouping depends only on the plan, never on which tiles are already done, so a
    resumed batch computes every tile exactly as an uninterrupted one would.
    """
    groups: list[list[Tile]] = []
    previous_shape = None
    for tile in tiles:
        x0, y0, x1, y1 = tile.padded(pad, plan.input_width, plan.input_height)
        shape = (x1 - x0, y1 - y0)
        if groups and len(groups[-1]) < size and shape == previous_shape:
            groups[-1].append(tile)
        else:
            groups.append([tile])
        previous_shape = shape
    return groups


@dataclass
class BatchReport:
    tiles: int
    skipped: int
    seconds: float


def upscale_batch(
    plan: PassPlan,
    batch: int,
    source,
    target,
    upscaler: Callable[[np.ndarray, int], np.ndarray],
    pad: int,
    progress: ProgressLog,
    tiles_per_forward: int = 1,
) -> BatchReport:
    """Upscale the tiles of `batch` from canvas `source` into canvas `target`."""
    tiles = plan.batch_tiles(batch)
    return upscale_tiles(plan, tiles, source, target, upscaler, pad, progress, tiles_per_forward)


def upscale_tiles(
    plan: PassPlan,
    tiles: list[Tile],
    source,
    target,
    upscaler: Callable[[np.ndarray, int], np.ndarray],
    pad: int,
    progress: ProgressLog,
    tiles_per_forward: int = 1,
) -> BatchReport:
    """Upscale `tiles` from canvas `source` into canvas `target`, skipping finished ones.

    Forward groups are formed over the whole pass, not over `tiles`: a floating-point
    forward can differ in the last bit with the number of windows stacked, so a tile is
    always computed in the same company whatever the batching or the resume state. A group
    that straddles the job's range is computed whole; only the job's own tiles are written.
    An upscaler that is `batch_invariant` is grouped over `tiles` alone, and one with
    `regions` computes only each tile's own output, not its padding.
    """
    started = time.perf_counter()
    own = {tile.index for tile in tiles}
    done = progress.finished()
    scale = plan.scale
    invariant = getattr(upscaler, "batch_invariant", False)
    company = tiles if invariant else plan.tiles_between(0, plan.tile_count)
    for group in forward_groups(company, plan, pad, tiles_per_forward):
        mine = [tile for tile in group if tile.index in own]
        if not mine or all(tile.index in done for tile in mine):
            continue
        boxes = [tile.padded(pad, plan.input_width, plan.input_height) for tile in group]
        windows = np.stack([np.asarray(source[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes])
        # each tile's own area inside its upscaled window
        crops = [
            (
                (tile.x - x0) * scale,
                (tile.y - y0) * scale,
                (tile.x - x0 + tile.width) * scale,
                (tile.y - y0 + tile.height) * scale,
            )
            for tile, (x0, y0, _, _) in zip(group, boxes, strict=True)
        ]
        if hasattr(upscaler, "regions"):
            upscaled = upscaler.regions(windows, scale, crops)
        else:
            upscaled = [
                out[top:bottom, left:right]
                for out, (left, top, right, bottom) in zip(
                    upscaler(windows, scale), crops, strict=True
                )
            ]
        for tile, pixels in zip(group, upscaled, strict=True):
            if tile.index not in own:
                continue
            target[
                tile.y * scale : (tile.y + tile.height) * scale,
                tile.x * scale : (tile.x + tile.width) * scale,
            ] = pixels
        progress.mark(tile.index for tile in mine)
        log.info("tiles %s done", [tile.index for tile in mine])
    skipped = len(own & done)
    return BatchReport(len(tiles), skipped, time.perf_counter() - started)
