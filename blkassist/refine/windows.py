"""The per-pass window store and the tile jobs that fill it.

A pass's refined windows overlap, so they cannot be written into the output canvas by the
jobs that make them. Each window lands whole in its own slot (one zarr shard) of the pass's
window store; blend jobs later compose the output canvas from them. A tile job writes
only its own windows' slots, then appends their indices to its progress log, so a job
killed halfway redoes only the windows it had not recorded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from blkassist import canvas
from blkassist.refine.anchor import anchor
from blkassist.refine.plan import RefinePass, Window, window_seed
from blkassist.refine.refiner import Refiner
from blkassist.sr.tiler import ProgressLog

log = logging.getLogger(__name__)


def create_store(path: str | os.PathLike, plan: RefinePass, bands: int):
    """An empty window store: slot i holds window i, one shard per window."""
    height, width = plan.window_height, plan.window_width
    inner = canvas.INNER_CHUNK
    sharded = height % inner == 0 and width % inner == 0 and max(height, width) > inner
    return zarr.create_array(
        store=str(path),
        shape=(plan.window_count, height, width, bands),
        chunks=(1, inner, inner, bands) if sharded else (1, height, width, bands),
        shards=(1, height, width, bands) if sharded else None,
        dtype="uint8",
        compressors=canvas.COMPRESSOR,
        fill_value=0,
        write_data=True,
    )


def read_window(source, window: Window) -> np.ndarray:
    return np.asarray(
        source[window.y : window.y + window.height, window.x : window.x + window.width]
    )


@dataclass
class TileReport:
    windows: int
    skipped: int
    seconds: float


def forward_groups(windows: list[Window], size: int) -> list[list[Window]]:
    """Windows sampled together: `size` consecutive windows of the pass (all windows of a
    pass share a shape), aligned on the whole pass rather than on the job, so a resumed job
    or a re-batching with tiles_per_job a multiple of `size` samples every window in the
    same company, hence bit-identically."""
    groups: dict[int, list[Window]] = {}
    for window in windows:
        groups.setdefault(window.index // size, []).append(window)
    return list(groups.values())


def refine_windows(
    plan: RefinePass,
    batch: int,
    source,
    base,
    store,
    make_refiner: Callable[[], Refiner],
    progress: ProgressLog,
    *,
    denoise: float,
    seeds: Callable[[int], int],
    anchor_strength: float,
    anchor_levels: int,
    tiles_per_forward: int = 1,
) -> TileReport:
    """Refine the windows of tile batch `batch` of `source`, anchored to `base`, into `store`.

    The refiner is made only when some window is left to do: a finished job that is rerun
    (or resumed at its end) loads no model.
    """
    started = time.perf_counter()
    windows = plan.batch_windows(batch)
    done = progress.finished()
    refiner = None
    skipped = 0
    for group in forward_groups(windows, tiles_per_forward):
        if all(window.index in done for window in group):
            skipped += len(group)
            continue
        refiner = refiner or make_refiner()
        inputs = np.stack([read_window(source, window) for window in group])
        refined = refiner.refine(inputs, [seeds(w.index) for w in group], denoise)
        for window, result in zip(group, refined, strict=True):
            reference = read_window(base, window)
            store[window.index] = anchor(result, reference, anchor_strength, anchor_levels)
        progress.mark(window.index for window in group)
        log.info("windows %s refined", [window.index for window in group])
    return TileReport(len(windows), skipped, time.perf_counter() - started)


def pass_seeds(seed: int, mural: str, plan: RefinePass) -> Callable[[int], int]:
    return lambda index: window_seed(seed, mural, plan.step, plan.number, index)


def seed_list(seed: int, mural: str, plan: RefinePass) -> Sequence[int]:
    return [window_seed(seed, mural, plan.step, plan.number, i) for i in range(plan.window_count)]


def progress_for(record: dict, batch: int) -> ProgressLog:
    return ProgressLog(Path(record["progress"]), batch)
