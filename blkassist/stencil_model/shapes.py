"""Simple RGBA ink shapes with real, anti-aliased alpha: training data for the tiny
transparent VAE when no Stencil dataset is at hand (demo and tests)."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blkassist.fsutil import atomic_path

_INKS = {
    "black": (18, 18, 22),
    "sepia": (112, 66, 20),
    "indigo": (40, 50, 130),
    "vermilion": (200, 60, 30),
    "ochre": (190, 140, 40),
}
KINDS = ("ring", "polygon", "cloud", "strokes", "hatching")
_SUPERSAMPLE = 4


def _polygon(rng, centre, radius, sides):
    turn = rng.uniform(0, 2 * math.pi)
    return [
        (
            centre[0] + radius * math.cos(turn + 2 * math.pi * k / sides),
            centre[1] + radius * math.sin(turn + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def ink_shape(size: int, kind: str, seed: int) -> Image.Image:
    """One RGBA shape on a clear ground: drawn at 4x and reduced with premultiplied
    filtering, so edges are anti-aliased and clear pixels carry no colour fringe."""
    rng = random.Random(seed)
    big = size * _SUPERSAMPLE
    colour = _INKS[rng.choice(sorted(_INKS))]
    opacity = rng.choice((255, 255, 220, 160))
    ink = (*colour, opacity)
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    centre = (big * rng.uniform(0.4, 0.6), big * rng.uniform(0.4, 0.6))
    radius = big * rng.uniform(0.22, 0.36)
    weight = max(2, int(big * rng.choice((0.04, 0.07, 0.11))))  # thin / medium / thick
    if kind == "ring":
        box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
        draw.ellipse(box, outline=ink, width=weight)
    elif kind == "polygon":
        points = _polygon(rng, centre, radius, rng.choice((3, 4, 5, 6)))
        draw.polygon(points, fill=ink if rng.random() < 0.5 else None)
        draw.line([*points, points[0]], fill=ink, width=weight, joint="curve")
    elif kind == "cloud":
        for _ in range(rng.randint(4, 7)):
            r = radius * rng.uniform(0.35, 0.6)
            x = centre[0] + rng.uniform(-radius, radius) * 0.7
            y = centre[1] + rng.uniform(-radius, radius) * 0.35
            draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif kind == "strokes":
        for _ in range(rng.randint(2, 4)):
            start = (rng.uniform(0.15, 0.85) * big, rng.uniform(0.15, 0.85) * big)
            end = (rng.uniform(0.15, 0.85) * big, rng.uniform(0.15, 0.85) * big)
            draw.line([start, end], fill=ink, width=weight)
    elif kind == "hatching":
        box = _polygon(rng, centre, radius, 4)
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).polygon(box, fill=255)
        lines = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        gap = weight * 3
        for offset in range(-big, big, gap):
            ImageDraw.Draw(lines).line([(offset, 0), (offset + big, big)], fill=ink, width=weight)
        image.paste(lines, (0, 0), mask)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(KINDS)}")
    # Reduce in premultiplied form: straight-alpha filtering would drag the black of clear
    # pixels into the edge colour.
    return image.convert("RGBa").resize((size, size), Image.Resampling.BOX).convert("RGBA")


def write_ink_shapes(folder: str | os.PathLike, count: int, size: int, seed: int) -> list[Path]:
    """`count` RGBA PNGs (kinds in turn) in `folder`, each with a sidecar caption."""
    folder = Path(folder)
    paths = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        image = ink_shape(size, kind, seed * 100_003 + index)
        path = folder / f"{kind}-{index:04d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        path.with_suffix(".txt").write_text(f"ink {kind}, transparent background\n")
        paths.append(path)
    return paths


def alpha_share(image: Image.Image) -> tuple[float, float]:
    """(share of clear pixels, share of opaque pixels) of an RGBA image."""
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return float((alpha <= 12).mean()), float((alpha >= 243).mean())
