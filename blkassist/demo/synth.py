"""A deterministic synthetic pen-and-ink artwork, so the demo ships nobody's art.

Contour lines, hatching and cross-hatching, stippling and paper grain, drawn at twice
the size and reduced (anti-aliased ink edges, like a scan of real linework).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

INK = (24, 20, 28)
PAPER = (238, 232, 218)


def _paper(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    grain = rng.normal(0, 6, (height, width))
    fibres = Image.fromarray(rng.normal(0, 40, (height // 8 + 1, width // 8 + 1)).astype("f"))
    fibres = np.asarray(fibres.resize((width, height), Image.BICUBIC))
    base = np.array(PAPER, dtype=np.float32)[None, None, :]
    return np.clip(base + (grain + 0.25 * fibres)[..., None], 0, 255)


def _hatch(draw, box, angle, spacing, width):
    x0, y0, x1, y1 = box
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0) / 2
    dx, dy = math.cos(angle), math.sin(angle)
    for offset in np.arange(-radius, radius, spacing):
        px, py = cx - dy * offset, cy + dx * offset
        draw.line(
            [(px - dx * radius, py - dy * radius), (px + dx * radius, py + dy * radius)],
            fill=255,
            width=width,
        )


def pen_and_ink(
    width: int, height: int, seed: int = 0, alpha: bool = False, zoom: float = 1.0
) -> Image.Image:
    """An RGB (or RGBA with a transparent margin) pen-and-ink composition.

    `zoom` > 1 draws a close-up: thicker lines, wider hatching, bigger dots.
    """
    rng = np.random.default_rng(seed)
    big = (width * 2, height * 2)
    ink = Image.new("L", big, 0)
    draw = ImageDraw.Draw(ink)
    line = max(1, round(min(big) / 400 * zoom))
    # Contour lines: nested wobbly closed curves around a few centres.
    for _ in range(3):
        cx, cy = rng.uniform(0.2, 0.8) * big[0], rng.uniform(0.2, 0.8) * big[1]
        phase = rng.uniform(0, 2 * math.pi, 4)
        for ring in range(1, 9):
            radius = ring * min(big) / 28 * zoom
            points = []
            for t in np.linspace(0, 2 * math.pi, 180):
                wobble = 1 + 0.15 * math.sin(3 * t + phase[0]) + 0.08 * math.sin(5 * t + phase[1])
                points.append(
                    (cx + radius * wobble * math.cos(t), cy + radius * wobble * math.sin(t))
                )
            draw.line(points + points[:1], fill=255, width=line)
    # Hatched and cross-hatched rectangles: tone by line density.
    for _ in range(4):
        w, h = rng.uniform(0.15, 0.35) * big[0], rng.uniform(0.15, 0.35) * big[1]
        x0, y0 = rng.uniform(0, big[0] - w), rng.uniform(0, big[1] - h)
        patch = Image.new("L", big, 0)
        patch_draw = ImageDraw.Draw(patch)
        spacing = rng.uniform(5, 12) * line
        _hatch(patch_draw, (x0, y0, x0 + w, y0 + h), rng.uniform(0, math.pi), spacing, line)
        if rng.random() < 0.5:
            _hatch(patch_draw, (x0, y0, x0 + w, y0 + h), rng.uniform(0, math.pi), spacing, line)
        mask = Image.new("L", big, 0)
        ImageDraw.Draw(mask).rectangle((x0, y0, x0 + w, y0 + h), fill=255)
        ink.paste(patch, (0, 0), mask)
    # Stippling: dot density falls off from a light source.
    lx, ly = rng.uniform(0, big[0]), rng.uniform(0, big[1])
    count = int(big[0] * big[1] / (90 * zoom * zoom))
    xs, ys = rng.uniform(0, big[0], count), rng.uniform(0, big[1], count)
    keep = rng.random(count) < np.hypot(xs - lx, ys - ly) / math.hypot(*big) * 0.6
    for x, y in zip(xs[keep], ys[keep], strict=True):
        draw.ellipse((x - line, y - line, x + line, y + line), fill=255)
    ink = ink.filter(ImageFilter.GaussianBlur(0.6)).resize((width, height), Image.LANCZOS)
    coverage = np.asarray(ink, dtype=np.float32)[..., None] / 255
    paper = _paper(width, height, rng)
    rgb = paper * (1 - coverage) + np.array(INK, np.float32) * coverage
    image = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")
    if alpha:
        margin = Image.new("L", (width, height), 0)
        inset = max(2, min(width, height) // 10)
        ImageDraw.Draw(margin).ellipse((inset, inset, width - inset, height - inset), fill=255)
        image.putalpha(margin)
    return image
