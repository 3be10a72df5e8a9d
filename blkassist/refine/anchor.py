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


def anchor_on_device(
    refined: np.ndarray, base: np.ndarray, strength: float, levels: int, device="cpu"
) -> np.ndarray:
    """`anchor` for a stack of windows (N, H, W, C): on a GPU in torch (numpy takes ~1 s per
    1024^2 window on one core), on the CPU with numpy (faster there); bit-equal either way."""
    if strength == 0:
        return refined
    if str(device).startswith("cpu"):
        return np.stack(
            [anchor(r, b, strength, levels) for r, b in zip(refined, base, strict=True)]
        )
    return anchor_torch(refined, base, strength, levels, device)


def anchor_torch(
    refined: np.ndarray, base: np.ndarray, strength: float, levels: int, device
) -> np.ndarray:
    """`anchor` of a stack of windows in torch on `device`: the same arithmetic (scipy's
    float64 accumulation stored as float32, mirrored borders, round half to even), with
    elementwise ops only, so no TF32 convolution changes a bit on CUDA."""
    import torch

    with torch.no_grad():
        out = torch.from_numpy(np.ascontiguousarray(refined)).to(device)
        low = _low_frequencies_torch(out, levels) - _low_frequencies_torch(
            torch.from_numpy(np.ascontiguousarray(base)).to(device), levels
        )
        result = out.float() - torch.tensor(strength, dtype=torch.float32) * low
        return result.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _low_frequencies_torch(images, levels: int):
    import torch

    low = images.float()
    for level in range(levels):
        dilation = 2**level
        for axis in (1, 2):  # rows, then columns, as convolve1d over axes 0 and 1
            length = low.shape[axis]
            index = torch.as_tensor(_mirror_index(length, dilation), device=low.device)
            padded = low.index_select(axis, index)
            left = padded.narrow(axis, 0, length)
            centre = padded.narrow(axis, dilation, length)
            right = padded.narrow(axis, 2 * dilation, length)
            # As scipy does it: the symmetric taps paired, in float64, stored as float32.
            low = (centre.double() * 0.5 + (left.double() + right.double()) * 0.25).float()
    return low


def _mirror_index(length: int, pad: int) -> np.ndarray:
    """Indices of [-pad, length + pad) mirrored about the end pixels (scipy's "mirror")."""
    positions = np.arange(-pad, length + pad)
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    positions = np.abs(positions) % period
    return np.where(positions >= length, period - positions, positions)
