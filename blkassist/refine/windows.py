"""The per-pass window store and the tile jobs that fill it.

A pass's refined windows overlap, so they cannot be written into the output canvas by the
jobs that make them. Each window lands whole in its own slot (one zarr shard) of the pass's
window store; blend jobs later compose the output canvas from them. A tile job writes
only its own windows' slots, then appends their indices to its progress log, so a job
killed halfway redoes only the windows it had not recorded (a torn last line counts as
not recorded).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from blkassist import canvas
from blkassist.refine.anchor import anchor_on_device
from blkassist.refine.noise import FieldNoise, NoiseField, NoiseSource, field_seed
from blkassist.refine.plan import RefinePass, Window
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
    """The window's pixels; a window overhanging the canvas's far border (by less than the
    16-pixel latent grid) is completed by mirroring, as the refiner pads."""
    pixels = np.asarray(
        source[window.y : window.y + window.height, window.x : window.x + window.width]
    )
    short_y, short_x = window.height - pixels.shape[0], window.width - pixels.shape[1]
    if short_y or short_x:
        mode = "reflect" if min(pixels.shape[:2]) > max(short_y, short_x) else "edge"
        pixels = np.pad(pixels, ((0, short_y), (0, short_x), (0, 0)), mode=mode)
    return pixels


@dataclass
class TileReport:
    windows: int
    skipped: int
    seconds: float
    timings: dict = field(default_factory=dict)  # seconds per stage, over the job
    groups: list = field(default_factory=list)  # seconds per stage of each forward group


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
    windows: list[Window],
    source,
    base,
    store,
    make_refiner: Callable[[], Refiner],
    progress: ProgressLog,
    *,
    denoise: float,
    noise: Callable[[Window], NoiseSource],
    anchor_strength: float,
    anchor_levels: int,
    tiles_per_forward: int = 1,
    device: str = "cpu",
) -> TileReport:
    """Refine `windows` of `source`, anchored to `base` (on `device`), into `store`.

    Each window starts from the noise its source gives (by default its part of the pass's
    noise field). The refiner is made only when some window is left to do: a finished job
    that is rerun (or resumed at its end) loads no model. At denoise 0 the pass copies its
    input: no model is loaded, nothing is anchored.
    """
    started = time.perf_counter()
    done = progress.finished()
    refiner = None
    skipped = 0
    timings = dict.fromkeys(("load", "read", "refine", "anchor", "write"), 0.0)
    groups = []
    clock = time.perf_counter
    for group in forward_groups(windows, tiles_per_forward):
        if all(window.index in done for window in group):
            skipped += len(group)
            continue
        if refiner is None and denoise > 0:
            t0 = clock()
            refiner = make_refiner()
            timings["load"] += clock() - t0
        t0 = clock()
        inputs = np.stack([read_window(source, window) for window in group])
        references = np.stack([read_window(base, window) for window in group])
        t1 = clock()
        if denoise == 0:  # the pass leaves its input as it is: no model, no anchoring
            anchored = inputs
            t2 = t3 = clock()
        else:
            refined = refiner.refine(inputs, [noise(window) for window in group], denoise)
            t2 = clock()
            anchored = anchor_on_device(refined, references, anchor_strength, anchor_levels, device)
            t3 = clock()
        for window, result in zip(group, anchored, strict=True):
            store[window.index] = result
        progress.mark(window.index for window in group)
        t4 = clock()
        spent = dict(zip(("read", "refine", "anchor", "write"),
                         (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))  # fmt: skip
        for stage, seconds in spent.items():
            timings[stage] += seconds
        groups.append({"windows": len(group), **{k: round(v, 4) for k, v in spent.items()}})
        log.info(
            "windows %s refined (read %.2f s, refine %.2f s, anchor %.2f s, write %.2f s)",
            [window.index for window in group], t1 - t0, t2 - t1, t3 - t2, t4 - t3,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    totals = {k: round(v, 3) for k, v in timings.items()}
    return TileReport(len(windows), skipped, seconds, totals, groups)


def context_box(plan: RefinePass, window: Window, context: int) -> Window:
    """What is sampled to re-render `window` with `context` more pixels of its surroundings
    on each side (a multiple of 16, so the box stays on the latent grid), inside the canvas
    (a window overhanging the far border keeps its overhang)."""
    if not context:
        return window
    x0, y0 = max(window.x - context, 0), max(window.y - context, 0)
    x1 = min(window.x + window.width + context, max(plan.width, window.x + window.width))
    y1 = min(window.y + window.height + context, max(plan.height, window.y + window.height))
    return Window(window.index, window.row, window.column, x0, y0, x1 - x0, y1 - y0)


def resample_window(
    plan: RefinePass,
    window: Window,
    source,
    base,
    refiner: Refiner,
    noise: Callable[[Window], NoiseSource],
    *,
    denoise: float,
    anchor_strength: float,
    anchor_levels: int,
    context: int = 0,
    prompt: str | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Sample one window again (alone, so its pixels never depend on company): its box
    grown by `context` is refined from `noise(box)` and anchored to `base`, and the window
    is cut out of it. `prompt` replaces the pass's prompt when given."""
    box = context_box(plan, window, context)
    options = {} if prompt is None else {"prompt": prompt}
    refined = refiner.refine(read_window(source, box)[None], [noise(box)], denoise, **options)
    reference = read_window(base, box)[None]
    anchored = anchor_on_device(refined, reference, anchor_strength, anchor_levels, device)[0]
    dx, dy = window.x - box.x, window.y - box.y
    return np.ascontiguousarray(anchored[dy : dy + window.height, dx : dx + window.width])


def pass_noise(seed: int, mural: str, plan: RefinePass) -> Callable[[Window], NoiseSource]:
    """Every window's starting noise: its part of the pass's canvas-wide noise field."""
    noise_field = pass_field(seed, mural, plan)
    return lambda window: FieldNoise(noise_field, window.x, window.y)


def pass_field(seed: int, mural: str, plan: RefinePass) -> NoiseField:
    return NoiseField(field_seed(seed, mural, plan.step, plan.number))


def progress_for(record: dict, first: int) -> ProgressLog:
    """The pass's progress log, as written by the tile job whose range starts at `first`."""
    return ProgressLog(Path(record["progress"]), first)
