"""Seam QA: how visible are a pass's window seams, compared with lines inside windows?

What is measured is the refinement's change: the pass's canvas minus the SR base (the
picture's own edges would otherwise swamp the measure wherever a seam happens to fall on
one). Each seam line is cut into segments between crossings of the other axis' seams, and
every segment gets two scores against lines through window centres (midway between
neighbouring seams: what a seamless refinement does):

- level step: the largest per-band difference between the mean change in a band on one
  side of the line and on the other, over the median of the same on the control lines
  (about 1: no worse than inside a window; anchoring keeps it there);
- texture: the RMS of the change's finest detail (the two finest a-trous scales, 1-4
  pixels: the texture a refinement paints) in a band along the seam (the middle half of
  the blend ramp), over the same in bands through the centres of the two windows it
  separates (about 1: the texture is continuous; cross-fading two unrelated textures
  lowers it to about 0.75 there).

A pass is scored on its own seams and on the seams of the earlier passes on the same canvas
(which its windows should hide). A thumbnail with every segment drawn in the colour of its
worse score shows where to look. The artist judges: nothing here fails a run. Memory: one
strip or one block at a time.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from PIL import Image, ImageDraw

from blkassist.refine.anchor import low_frequencies
from blkassist.refine.plan import BLOCK, RefinePass

log = logging.getLogger(__name__)

THUMB_LONG_SIDE = 512
TEXTURE_LEVELS = 2  # a-trous scales 1 and 2: detail of 1-4 pixels
_EPSILON = 0.5  # grey levels: a flat picture's controls must not make every seam infinite


def band_width(plan: RefinePass) -> int:
    return int(min(32, max(2, plan.overlap // 2)))


def _cuts(length: int, seams: tuple[int, ...]) -> list[tuple[int, int]]:
    points = [0, *seams, length]
    return [(a, b) for a, b in itertools.pairwise(points) if b > a]


def texture_band(plan: RefinePass) -> int:
    """Half-width of the texture band: the middle half of the blend ramp, where two
    windows weigh most alike and a cross-fade of unrelated textures dips most."""
    return int(max(2, plan.overlap // 4))


def _measure_line(canvas, base, axis: str, line: int, lo: int, hi: int, band: int, tband: int):
    """(level step in the band of half-width `band`, texture RMS in the band of half-width
    `tband`) of the change across `line` (a column if axis is "x", a row if "y") over
    [lo, hi) along it."""
    across_len, along_len = (canvas.shape[1], canvas.shape[0])[:: 1 if axis == "x" else -1]
    margin = 2**TEXTURE_LEVELS - 1  # the detail filter's reach
    reach = max(band, tband + margin)
    ra, rb = max(line - reach, 0), min(line + reach, across_len)
    la, lb = max(lo - margin, 0), min(hi + margin, along_len)
    region = (slice(la, lb), slice(ra, rb)) if axis == "x" else (slice(ra, rb), slice(la, lb))
    change = np.asarray(canvas[region], np.float32) - np.asarray(base[region], np.float32)
    change = change[..., :3]
    if axis == "y":  # rows along the line, columns across it
        change = change.transpose(1, 0, 2)
    detail = change - low_frequencies(change, TEXTURE_LEVELS)
    along = slice(lo - la, hi - la)
    t0, t1 = max(line - tband, 0) - ra, min(line + tband, across_len) - ra
    detail = detail[along, t0:t1].astype(np.float64)
    texture = float(np.sqrt(np.mean(detail**2))) if detail.size else 0.0
    a, b = max(line - band, 0), min(line + band, across_len)
    before = change[along, a - ra : line - ra].astype(np.float64)
    after = change[along, line - ra : b - ra].astype(np.float64)
    if before.size == 0 or after.size == 0:
        return 0.0, texture
    step = float(np.max(np.abs(before.mean(axis=(0, 1)) - after.mean(axis=(0, 1)))))
    return step, texture


def _axis_lines(plan: RefinePass, axis: str, band: int):
    """Seam lines (this pass's, then the earlier passes' on this canvas), as (line, grid,
    pass); control lines midway between neighbouring seam lines (no control sits on any
    seam), as {pair index: line}; and every seam line in order."""
    length = plan.width if axis == "x" else plan.height
    seams, taken = [], set()
    for grid, stage in [("own", plan), *(("earlier", earlier) for earlier in plan.earlier())]:
        for line in stage.seams_x if axis == "x" else stage.seams_y:
            if line not in taken:
                taken.add(line)
                seams.append((line, grid, stage.name))
    points = [0, *sorted(taken), length]
    controls = {
        i: (a + b) // 2 for i, (a, b) in enumerate(itertools.pairwise(points)) if b - a > 2 * band
    }
    return seams, controls, points[1:-1]


def measure(plan: RefinePass, canvas, base) -> dict:
    """Seam segments of `canvas` (refined from `base`) with their scores, and the pass's
    worst and typical scores."""
    band, tband = band_width(plan), texture_band(plan)
    lines = {axis: _axis_lines(plan, axis, band) for axis in ("x", "y")}
    spans = {"x": _cuts(plan.height, tuple(lines["y"][2])),
             "y": _cuts(plan.width, tuple(lines["x"][2]))}  # fmt: skip
    controls = {}  # (axis, pair index, span start) -> (step, texture)
    for axis in ("x", "y"):
        for pair, line in lines[axis][1].items():
            for lo, hi in spans[axis]:
                controls[axis, pair, lo] = _measure_line(
                    canvas, base, axis, line, lo, hi, band, tband
                )
    steps = [step for step, _ in controls.values()]
    reference = float(np.median(steps)) if steps else 0.0
    control_texture = float(np.median([t for _, t in controls.values()])) if controls else 0.0
    segments = []
    for axis in ("x", "y"):
        seam_lines, _, ordered = lines[axis]
        for line, grid, stage in seam_lines:
            pair = ordered.index(line)  # the controls left and right are pairs pair, pair + 1
            for lo, hi in spans[axis]:
                step, texture = _measure_line(canvas, base, axis, line, lo, hi, band, tband)
                beside = [controls[key][1] for key in ((axis, pair, lo), (axis, pair + 1, lo))
                          if key in controls]  # fmt: skip
                inside = float(np.mean(beside)) if beside else control_texture
                segments.append({
                    "axis": axis, "at": line, "from": lo, "to": hi, "grid": grid, "of": stage,
                    "step": round(step, 4),
                    "score": round(step / max(reference, _EPSILON), 4),
                    "texture": round((texture + _EPSILON) / (inside + _EPSILON), 4),
                })  # fmt: skip
    worst = max(segments, key=lambda s: s["score"], default=None)
    dip = min(segments, key=lambda s: s["texture"], default=None)
    textures = [s["texture"] for s in segments]
    return {
        "pass": plan.name,
        "coherence": plan.coherence,
        "band": band,
        "texture_band": tband,
        "control_step": round(reference, 4),
        "control_texture": round(control_texture, 4),
        "segments": segments,
        "seam_count": len(segments),
        "worst_score": worst["score"] if worst else 0.0,
        "worst_at": _location(worst) if worst else None,
        "mean_score": round(float(np.mean([s["score"] for s in segments])), 4) if segments else 0.0,
        "texture_ratio": round(float(np.median(textures)), 4) if segments else 1.0,
        "worst_texture": dip["texture"] if dip else 1.0,
        "worst_texture_at": _location(dip) if dip else None,
    }


def _location(segment: dict) -> dict:
    """Centre pixel (x, y) of a segment."""
    middle = (segment["from"] + segment["to"]) // 2
    if segment["axis"] == "x":
        return {"x": segment["at"], "y": middle}
    return {"x": middle, "y": segment["at"]}


def thumbnail(canvas, long_side: int = THUMB_LONG_SIDE) -> tuple[np.ndarray, int]:
    """An area-averaged RGB thumbnail (long side <= `long_side`) and its reduction factor,
    built block by block (memory: one block and the thumbnail)."""
    height, width, bands = canvas.shape
    factor = max(1, math.ceil(max(height, width) / long_side))
    th, tw = math.ceil(height / factor), math.ceil(width / factor)
    sums = np.zeros((th, tw, 3), np.float64)
    counts = np.zeros((th, tw, 1), np.float64)
    # Blocks whose side is a multiple of the factor never straddle a thumbnail cell.
    step = max(factor, (BLOCK // factor) * factor)
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            block = np.asarray(canvas[y0 : y0 + step, x0 : x0 + step], np.float64)
            colour = block[..., :3] if bands >= 3 else np.repeat(block[..., :1], 3, axis=2)
            rows = np.arange(0, colour.shape[0], factor)
            cols = np.arange(0, colour.shape[1], factor)
            reduced = np.add.reduceat(np.add.reduceat(colour, rows, axis=0), cols, axis=1)
            ones = np.ones((*colour.shape[:2], 1))
            n = np.add.reduceat(np.add.reduceat(ones, rows, axis=0), cols, axis=1)
            ty, tx = y0 // factor, x0 // factor
            sums[ty : ty + reduced.shape[0], tx : tx + reduced.shape[1]] += reduced
            counts[ty : ty + n.shape[0], tx : tx + n.shape[1]] += n
    return (sums / np.maximum(counts, 1)).round().astype(np.uint8), factor


def _colour(score: float, texture: float = 1.0) -> tuple[int, int, int]:
    """The worse of the two: level step green at <= 1, yellow at 2, red at >= 3; texture
    green at >= 1, yellow at 0.8, red at <= 0.6."""
    t = min(max((score - 1) / 2, (1 - texture) / 0.4, 0.0), 1.0)
    return (int(255 * min(1, 2 * t)), int(255 * min(1, 2 - 2 * t)), 0)


def heatmap(thumb: np.ndarray, factor: int, report: dict) -> Image.Image:
    """The thumbnail in grey with each seam segment drawn in its score's colour."""
    grey = Image.fromarray(thumb).convert("L").convert("RGB")
    draw = ImageDraw.Draw(grey)
    for seg in report["segments"]:
        at, lo, hi = seg["at"] // factor, seg["from"] // factor, max(seg["to"] // factor - 1, 0)
        line = [(at, lo), (at, hi)] if seg["axis"] == "x" else [(lo, at), (hi, at)]
        draw.line(line, fill=_colour(seg["score"], seg.get("texture", 1.0)), width=2)
    return grey


def panel_sheet(panels: list[tuple[str, Image.Image]]) -> Image.Image:
    """Heatmaps side by side, each under its label."""
    label_h = 16
    width = sum(image.width for _, image in panels) + 8 * (len(panels) - 1)
    height = max(image.height for _, image in panels) + label_h
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    left = 0
    for label, image in panels:
        draw.text((left + 2, 2), label, fill="black")
        sheet.paste(image, (left, label_h))
        left += image.width + 8
    return sheet
