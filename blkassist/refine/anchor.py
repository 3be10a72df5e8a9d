"""Colour anchoring: a refined window keeps its high frequencies and takes its low
frequencies from the SR base window, so tone and colour cannot drift from tile to tile.

The split is an a-trous wavelet decomposition (StableSR's colour fix): `levels` blurs with
the [1, 2, 1] / 4 kernel, separable, at dilations 1, 2, 4, ...; what is left after the last
blur is the low-frequency residual. Borders are mirrored, identically for both images, so
a colour offset that is constant over a window is removed exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d


def low_frequencies(image: np.ndarray, levels: int) -> np.ndarray:
    """The a-trous residual of an (H, W, C) image after `levels` blurs, as float32."""
    low = image.astype(np.float32)
    for level in range(levels):
        dilation = 2**level
        kernel = np.zeros(2 * dilation + 1, np.float32)
        kernel[[0, dilation, 2 * dilation]] = (0.25, 0.5, 0.25)
        for axis in (0, 1):
            low = convolve1d(low, kernel, axis=axis, mode="mirror")
    return low


def anchor(refined: np.ndarray, base: np.ndarray, strength: float, levels: int) -> np.ndarray:
    """`refined` with (a `strength` share of) its low frequencies replaced by `base`'s.

    strength 1: low frequencies exactly the base's; 0: the refinement unchanged.
    """
    if strength == 0:
        return refined
    drift = low_frequencies(refined, levels) - low_frequencies(base, levels)
    result = refined.astype(np.float32) - np.float32(strength) * drift
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)
