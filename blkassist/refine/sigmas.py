"""What `denoise` means: the noise level the sampler really starts from.

Diffusers' Flux img2img takes a `strength` and cuts its sigma schedule after shifting it by
the image's token count, so one strength starts from different noise at 512 and 1536 pixels
(0.3 at 28 steps starts near sigma 0.47 at 512^2 and 0.60 at 1024^2). Here a pass starts at
sigma = denoise exactly, at every tile size: its sigmas are the full `steps`-step Flux
schedule at one fixed reference shift (the shift Flux uses at 1024^2), kept below `denoise`,
with `denoise` itself first. The reference shift is recorded with the pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

REFERENCE_TOKENS = 4096  # 1024 x 1024 pixels: (1024 / 16)^2 packed latent tokens
_MIN_GAP = 1e-3  # a schedule point this close below `denoise` would be a wasted step


def reference_shift(scheduler_config: Mapping) -> dict:
    """The time shift the pass uses, independent of the tile size: Flux's dynamic shift at
    the reference token count, or the scheduler's static shift."""
    if scheduler_config.get("use_dynamic_shifting", False):
        base_len = scheduler_config.get("base_image_seq_len", 256)
        max_len = scheduler_config.get("max_image_seq_len", 4096)
        base, top = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
        mu = base + (top - base) * (REFERENCE_TOKENS - base_len) / (max_len - base_len)
        return {"kind": "dynamic", "mu": mu, "factor": math.exp(mu)}
    factor = float(scheduler_config.get("shift", 1.0))
    return {"kind": "static", "factor": factor}


def shifted(t: np.ndarray, factor: float) -> np.ndarray:
    """Flux's time shift (exponential for dynamic shifting, which equals the static form
    with factor = exp(mu))."""
    return factor * t / (1 + (factor - 1) * t)


def pass_sigmas(denoise: float, steps: int, scheduler_config: Mapping) -> np.ndarray:
    """Sigmas of one pass, from `denoise` down to 0 (the last entry), float64."""
    if not 0 < denoise <= 1:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    factor = reference_shift(scheduler_config)["factor"]
    full = shifted(np.linspace(1.0, 1.0 / steps, steps), factor)
    below = full[full < denoise - _MIN_GAP]
    return np.concatenate([[denoise], below, [0.0]])


def diffusers_start_sigma(
    strength: float, steps: int, tokens: int, scheduler_config: Mapping
) -> float:
    """The sigma diffusers' FluxImg2ImgPipeline would really start from (for comparison)."""
    config = dict(scheduler_config)
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    mu = base + (top - base) * (tokens - base_len) / (max_len - base_len)
    full = shifted(np.linspace(1.0, 1.0 / steps, steps), math.exp(mu))
    start = int(max(steps - min(steps * strength, steps), 0))
    return float(full[start])
