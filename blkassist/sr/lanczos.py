"""The weight-free upscaler for previews and benchmarks (no torch import needed)."""

import numpy as np
from PIL import Image

_MODES = {3: "RGB", 4: "RGBA"}
_SUPPORT = 4  # source pixels kept either side of a box: Lanczos-3 reads 3, plus rounding


class LanczosUpscaler:
    """Lanczos-3 by Pillow (premultiplied for RGBA, so no halo at alpha edges)."""

    native_scale = None
    # Each window is resized alone, so which windows share a call cannot change a pixel:
    # the tiler may group a job's own tiles freely instead of the whole pass's.
    batch_invariant = True

    def __call__(self, tiles: np.ndarray, scale: int) -> np.ndarray:
        size = (tiles.shape[2] * scale, tiles.shape[1] * scale)
        return np.stack([np.asarray(self._image(t).resize(size, Image.LANCZOS)) for t in tiles])

    def regions(
        self, tiles: np.ndarray, scale: int, boxes: list[tuple[int, int, int, int]]
    ) -> list[np.ndarray]:
        """Only the `boxes` (x0, y0, x1, y1, in output pixels, multiples of `scale`) of the
        upscaled windows, bit-identical to cropping the whole upscale.

        Lanczos-3 reads 3 source pixels either side, so for a power-of-two scale (sample
        positions are exact binary fractions, whatever the window's origin) each window
        is first trimmed to its box plus a margin: the padding a neural net needs is not
        resized. Other scales round positions with the origin, so their windows stay whole.
        """
        if scale & (scale - 1):
            return [
                out[y0:y1, x0:x1]
                for out, (x0, y0, x1, y1) in zip(self(tiles, scale), boxes, strict=True)
            ]
        out = []
        for tile, (x0, y0, x1, y1) in zip(tiles, boxes, strict=True):
            left, top = max(0, x0 // scale - _SUPPORT), max(0, y0 // scale - _SUPPORT)
            trimmed = tile[top : y1 // scale + _SUPPORT, left : x1 // scale + _SUPPORT]
            upscaled = self(trimmed[None], scale)[0]
            dx, dy = left * scale, top * scale
            out.append(upscaled[y0 - dy : y1 - dy, x0 - dx : x1 - dx])
        return out

    @staticmethod
    def _image(tile: np.ndarray) -> Image.Image:
        return Image.fromarray(tile, _MODES[tile.shape[2]])
