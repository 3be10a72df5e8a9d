"""A deterministic synthetic pen-and-ink corpus for the demo and the tests.

Compositions (a few at high resolution) and detail close-ups, in one folder per kind so
that the folder taxonomy shows up in captions. Mixed file formats exercise ingest.
"""

from __future__ import annotations

import os
from pathlib import Path

from blkassist.demo.synth import pen_and_ink
from blkassist.fsutil import atomic_path

ASPECTS = ((4, 3), (3, 4), (1, 1), (16, 9), (2, 3))
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("tif", "TIFF"))


def _size(long_side: int, aspect: tuple[int, int]) -> tuple[int, int]:
    w, h = aspect
    scale = long_side / max(w, h)
    return round(w * scale), round(h * scale)


def write_corpus(
    folder: str | os.PathLike,
    seed: int = 0,
    compositions: int = 12,
    details: int = 4,
    long_side: int = 1024,
    high_resolution: int = 2,
) -> list[Path]:
    """Draw the corpus into `folder` (built under a temporary name, then renamed)."""
    written = []
    with atomic_path(folder) as tmp:
        for kind, count in (("compositions", compositions), ("details", details)):
            (tmp / kind).mkdir(parents=True)
            for index in range(count):
                number = index if kind == "compositions" else compositions + index
                side = long_side * (2 if kind == "compositions" and index < high_resolution else 1)
                width, height = _size(side, ASPECTS[number % len(ASPECTS)])
                zoom = 3.0 if kind == "details" else 1.0
                image = pen_and_ink(width, height, seed=seed * 1000 + number, zoom=zoom)
                suffix, fmt = FORMATS[number % len(FORMATS)]
                name = f"{kind[:-1]}-{index:03d}.{suffix}"
                options = {"quality": 95} if fmt == "JPEG" else {}
                image.save(tmp / kind / name, format=fmt, **options)
                written.append(Path(folder) / kind / name)
    return written
