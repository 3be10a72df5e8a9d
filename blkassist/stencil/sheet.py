"""A contact sheet of a Stencil set: one row per category, over a checkerboard so that
transparency shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blkassist.fsutil import atomic_path
from blkassist.stencil.composite import checkerboard, over, premultiply, resize, unpremultiply

LABEL_WIDTH = 220


def category_rows(manifest: dict) -> dict[str, list[str]]:
    """Original (not mirrored or augmented) files grouped by their folder, in order."""
    rows: dict[str, list[str]] = {}
    for entry in manifest["assets"]:
        if entry["variant"] == "original":
            rows.setdefault(str(Path(entry["file"]).parent), []).append(entry["file"])
    return dict(sorted(rows.items()))


def contact_sheet(
    dataset: str | os.PathLike, output: str | os.PathLike, per_row: int = 8, thumb: int = 160
) -> dict:
    dataset = Path(dataset)
    manifest = json.loads((dataset / "manifest.json").read_text())
    rows = category_rows(manifest)
    height = max(1, len(rows)) * (thumb + 8) + 8
    columns = min(per_row, max((len(files) for files in rows.values()), default=1))
    width = LABEL_WIDTH + columns * (thumb + 8) + 8
    sheet = premultiply(np.full((height, width, 4), 255, np.uint8))
    label = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(label)
    for r, (folder, files) in enumerate(rows.items()):
        y = 8 + r * (thumb + 8)
        draw.text((8, y + thumb // 2 - 6), f"{folder} ({len(files)})", fill=(0, 0, 0, 255))
        for c, file in enumerate(files[:per_row]):
            with Image.open(dataset / file) as image:
                rgba = np.asarray(image.convert("RGBA"))
            scale = thumb / max(rgba.shape[:2])
            rgba = resize(
                rgba, max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale))
            )
            h, w = rgba.shape[:2]
            x0 = LABEL_WIDTH + 8 + c * (thumb + 8) + (thumb - w) // 2
            y0 = y + (thumb - h) // 2
            cell = over(premultiply(rgba), checkerboard(h, w, cell=8))
            sheet[y0 : y0 + h, x0 : x0 + w] = cell
    out = Image.alpha_composite(Image.fromarray(unpremultiply(sheet), "RGBA"), label)
    with atomic_path(output) as tmp:
        out.convert("RGB").save(tmp, format="PNG")
    return {folder: len(files) for folder, files in rows.items()}
