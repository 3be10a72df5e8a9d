"""Stylised clouds and flat geometric shapes as ink drawings.

A shape is its fill (polygons painted in order: 255 adds, 0 cuts); its ink outline is traced
from the fill's coverage (skimage's marching squares) so that it follows the union exactly,
then drawn as a few hand-drawn strokes. Shading hatches the side away from the light.
Every parameter comes from the spec (planned by the dataset from its seed).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from blkassist.stencil.render import Drawing, Hatch, InkStyle, Stroke, closed_strokes

SHAPES = ("disc", "star", "crescent", "ring")


def circle(cx: float, cy: float, r: float, points: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def traced_outlines(fill: list[tuple[np.ndarray, int]], size, min_length: float = 12.0):
    """The closed outlines of the fill (outer and inner), in output pixels."""
    from skimage.measure import approximate_polygon, find_contours  # scipy: not at parse time

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for polygon, value in fill:
        draw.polygon(np.asarray(polygon).ravel().tolist(), fill=value)
    padded = np.pad(np.asarray(mask, np.float32) / 255, 1)
    outlines = []
    for contour in find_contours(padded, 0.5):
        xy = contour[:, ::-1] - 1  # (row, col) -> (x, y), undo the padding
        xy = approximate_polygon(xy, tolerance=0.4)[:-1]  # closed: drop the repeated end
        length = np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()
        if len(xy) >= 3 and length >= min_length:
            outlines.append(_dense(xy, 3.0))
    return outlines


def _dense(closed: np.ndarray, spacing: float) -> np.ndarray:
    """Points about every `spacing` px around a closed polygon (for corner detection)."""
    ring = np.concatenate([closed, closed[:1]])
    steps = np.linalg.norm(np.diff(ring, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    u = np.arange(0, arc[-1], spacing)
    return np.stack([np.interp(u, arc, ring[:, 0]), np.interp(u, arc, ring[:, 1])], axis=1)


def _outlined(fill, size, style: InkStyle, seed: int, light2d, shade_depth: float) -> Drawing:
    rng = np.random.default_rng(seed)
    drawing = Drawing(fill=fill)
    for contour in traced_outlines(fill, size):
        drawing.strokes += closed_strokes(
            contour, style.width * style.silhouette_scale, int(rng.integers(2**31))
        )
    light = np.asarray(light2d, float) / np.linalg.norm(light2d)
    drawing.hatches.append(
        Hatch(
            fill,
            math.atan2(light[1], light[0]) + math.pi / 4 + rng.normal(0, 0.2),
            style.hatch_spacing,
            seed=int(rng.integers(2**31)),
            shadow_offset=tuple((light * shade_depth).tolist()),
        )
    )
    return drawing


def cloud_drawing(spec: dict, size, style: InkStyle) -> Drawing:
    """A stylised cloud: a flattened base ellipse with round bumps along its upper edge, and
    a few curls inside the bumps."""
    w, h = size
    cx, cy = spec["centre"][0] * w, spec["centre"][1] * h
    rx, ry = spec["width"] * w / 2, spec["height"] * h / 2
    fill = [(ellipse(cx, cy + ry * 0.25, rx, ry * 0.55), 255)]
    bumps = spec["bumps"]  # [position along the arc in [0, 1], radius relative to ry]
    for position, radius in bumps:
        angle = math.pi * (1 - position)  # left end to right end over the top
        bx = cx + rx * 0.82 * math.cos(angle)
        by = cy + ry * 0.25 - ry * 0.7 * math.sin(angle)
        fill.append((circle(bx, by, radius * ry), 255))
    drawing = _outlined(fill, size, style, spec["seed"], spec["light"], 0.22 * ry)
    rng = np.random.default_rng(spec["seed"] + 1)
    for position, radius in bumps[:: max(1, len(bumps) // 2)]:
        angle = math.pi * (1 - position)
        bx = cx + rx * 0.82 * math.cos(angle)
        by = cy + ry * 0.25 - ry * 0.7 * math.sin(angle)
        start = rng.uniform(0.6, 1.2) * math.pi
        t = np.linspace(start, start + rng.uniform(0.5, 0.8) * math.pi, 24)
        curl = np.stack([bx + 0.6 * radius * ry * np.cos(t), by + 0.6 * radius * ry * np.sin(t)], 1)
        drawing.strokes.append(Stroke(curl, style.width, int(rng.integers(2**31))))
    return drawing


def shape_drawing(spec: dict, size, style: InkStyle) -> Drawing:
    """A flat geometric shape (disc, five-pointed star, crescent or ring), turned by
    spec['angle'] degrees."""
    w, h = size
    cx, cy = spec["centre"][0] * w, spec["centre"][1] * h
    r = spec["radius"] * min(w, h)
    turn = math.radians(spec["angle"])
    kind = spec["shape"]
    if kind == "disc":
        fill = [(circle(cx, cy, r), 255)]
    elif kind == "star":
        t = turn - math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * spec.get("inner", 0.45))
        fill = [(np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1), 255)]
    elif kind == "crescent":
        d = 0.45 * r
        fill = [
            (circle(cx, cy, r), 255),
            (circle(cx + d * math.cos(turn), cy + d * math.sin(turn), 0.85 * r), 0),
        ]
    elif kind == "ring":
        fill = [(circle(cx, cy, r), 255), (circle(cx, cy, r * spec.get("inner", 0.55)), 0)]
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of {', '.join(SHAPES)}")
    return _outlined(fill, size, style, spec["seed"], spec["light"], 0.18 * r)
