"""Blend jobs: compose output blocks of a pass's canvas from the windows covering them.

Each window's weight is the outer product of its two axis profiles (plan.axis_weights: a
raised-cosine band `overlap` pixels wide centred in each overlap), divided per axis by the
sum of the covering windows' profiles, so the weights at every pixel sum to exactly one:
identical windows reproduce their input exactly. Each blend job writes whole, disjoint
blocks of the output canvas.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from blkassist.refine.plan import RefinePass, axis_weights

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=64)
def _profile(positions: tuple[int, ...], size: int, index: int, band: int) -> np.ndarray:
    return np.asarray(axis_weights(positions, size, index, band), np.float64)


def _axis_share(positions, size, index, lo, hi, band) -> tuple[np.ndarray, int, int]:
    """Normalised weights of window `index` over [lo, hi) ∩ the window, with that range."""
    start = positions[index]
    a, b = max(lo, start), min(hi, start + size)
    total = np.zeros(hi - lo)
    for other, other_start in enumerate(positions):
        o_a, o_b = max(lo, other_start), min(hi, other_start + size)
        if o_a < o_b:
            total[o_a - lo : o_b - lo] += _profile(positions, size, other, band)[
                o_a - other_start : o_b - other_start
            ]
    own = _profile(positions, size, index, band)[a - start : b - start]
    return own / total[a - lo : b - lo], a, b


def compose_block(plan: RefinePass, store, box: tuple[int, int, int, int]) -> np.ndarray:
    """The blended pixels of `box` = (x0, y0, x1, y1), as uint8."""
    x0, y0, x1, y1 = box
    accumulated = None
    for window in plan.covering(*box):
        wx, ax, bx = _axis_share(plan.xs, plan.window_width, window.column, x0, x1, plan.overlap)
        wy, ay, by = _axis_share(plan.ys, plan.window_height, window.row, y0, y1, plan.overlap)
        if not (wx.any() and wy.any()):
            continue  # its blend weight is zero over this block
        pixels = np.asarray(
            store[window.index, ay - window.y : by - window.y, ax - window.x : bx - window.x]
        )
        if accumulated is None:
            accumulated = np.zeros((y1 - y0, x1 - x0, pixels.shape[2]), np.float64)
        weight = (wy[:, None] * wx[None, :])[..., None]
        accumulated[ay - y0 : by - y0, ax - x0 : bx - x0] += weight * pixels
    return np.clip(np.rint(accumulated), 0, 255).astype(np.uint8)


def blend_blocks(plan: RefinePass, blocks: range, store, target) -> dict:
    """Write output `blocks` into `target`."""
    started = time.perf_counter()
    for index in blocks:
        x0, y0, x1, y1 = box = plan.block_box(index)
        target[y0:y1, x0:x1] = compose_block(plan, store, box)
    seconds = time.perf_counter() - started
    log.info("blocks %d-%d: blended in %.1f s", blocks.start, blocks.stop - 1, seconds)
    return {"first": blocks.start, "stop": blocks.stop, "blocks": len(blocks), "seconds": seconds}
