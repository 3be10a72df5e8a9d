"""The weight-free upscaler for previews and benchmarks (no torch import needed)."""

import numpy as np
from PIL import Image


class LanczosUpscaler:
    """Lanczos-3 by Pillow (premultiplied for RGBA, so no halo at alpha edges)."""

    native_scale = None

    def __call__(self, tiles: np.ndarray, scale: int) -> np.ndarray:
        mode = {3: "RGB", 4: "RGBA"}[tiles.shape[3]]
        size = (tiles.shape[2] * scale, tiles.shape[1] * scale)
        return np.stack(
            [np.asarray(Image.fromarray(t, mode).resize(size, Image.LANCZOS)) for t in tiles]
        )
