"""RGBA previews: over a grey checkerboard (the LayerDiffuse convention, 0.5 +- 0.05 grey),
so clear, half-clear and opaque pixels can be told apart at a glance."""

from __future__ import annotations

import numpy as np
from PIL import Image


def checkerboard(width: int, height: int, cell: int | None = None) -> np.ndarray:
    """(H, W, 3) float in [0, 1]; cells of 64 px at full size, smaller on small images."""
    cell = cell or max(4, min(64, min(width, height) // 8))
    yy, xx = np.mgrid[0:height, 0:width]
    parity = ((yy // cell) + (xx // cell)) % 2
    grey = 0.45 + 0.1 * parity
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def over_checkerboard(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
    alpha = rgba[..., 3:]
    board = checkerboard(image.width, image.height)
    shown = rgba[..., :3] * alpha + board * (1 - alpha)
    return Image.fromarray(np.round(shown * 255).astype(np.uint8), "RGB")
