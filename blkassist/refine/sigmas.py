"""What `denoise` and `steps` mean: the sigmas a refinement pass really samples.

`denoise` means what the tools the paper's values were tuned in mean by it (ComfyUI's
KSampler denoise, diffusers' img2img strength): the fraction of the shifted schedule the
pass runs. The pass starts at time t = denoise, and sigma = shift(t): 0.30 starts near
sigma 0.58. Those tools shift the schedule by the image's token count, so one value starts
from different noise at 512 and 1536 pixels; here the shift is Flux's at a fixed reference
of 1024 x 1024 pixels (4096 packed tokens, the shift ComfyUI applies to Flux by default),
so a value means the same noise at every tile size. `steps` is the number of model
evaluations the pass runs (as with KSampler's steps at a denoise below 1): the times are
evenly spaced from `denoise` down to 0, so there are no near-duplicate steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

REFERENCE_TOKENS = 4096  # 1024 x 1024 pixels: (1024 / 16)^2 packed latent tokens


def reference_shift(scheduler_config: Mapping) -> dict:
    """The time shift the pass uses, independent of the tile size: Flux's dynamic shift at
    the reference token count, or the scheduler's static shift."""
    if scheduler_config.get("use_dynamic_shifting", False):
        base_len = scheduler_config.get("base_image_seq_len", 256)
        max_len = scheduler_config.get("max_image_seq_len", 4096)
        base, top = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
        mu = base + (top - base) * (REFERENCE_TOKENS - base_len) / (max_len - base_len)
        return {"kind": "dynamic", "tokens": REFERENCE_TOKENS, "mu": mu, "factor": math.exp(mu)}
    factor = float(scheduler_config.get("shift", 1.0))
    return {"kind": "static", "factor": factor}


def shifted(t, factor: float):
    """Flux's time shift (exponential for dynamic shifting, which equals the static form
    with factor = exp(mu))."""
    return factor * t / (1 + (factor - 1) * t)


def pass_times(denoise: float, steps: int) -> np.ndarray:
    """The `steps` + 1 times of a pass, from `denoise` down to 0, evenly spaced (denoise 0:
    the single time 0, no evaluation: the pass leaves its input as it is)."""
    if not 0 <= denoise <= 1:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if denoise == 0:
        return np.zeros(1)
    return denoise * np.linspace(1.0, 0.0, steps + 1)


def pass_sigmas(denoise: float, steps: int, scheduler_config: Mapping) -> np.ndarray:
    """Sigmas of one pass, float64: `steps` + 1 values from shift(denoise) down to 0 (the
    sampler evaluates the model at each but the last)."""
    factor = reference_shift(scheduler_config)["factor"]
    return shifted(pass_times(denoise, steps), factor)


def start_sigma(denoise: float, scheduler_config: Mapping) -> float:
    return float(shifted(denoise, reference_shift(scheduler_config)["factor"]))


def pass_schedule(denoise: float, steps: int, scheduler_config: Mapping) -> dict:
    """What provenance records about a pass's noise schedule."""
    sigmas = pass_sigmas(denoise, steps, scheduler_config)
    return {
        "denoise": denoise,
        "start_sigma": round(float(sigmas[0]), 6),
        "sigmas": [round(float(s), 6) for s in sigmas],
        "model_evaluations": len(sigmas) - 1,
        "shift": reference_shift(scheduler_config),
    }


def scheduler_config(model: str | Path) -> dict:
    """The flow-matching scheduler's config of a random-model spec or a diffusers folder
    (defaults of FlowMatchEulerDiscreteScheduler apply to what it leaves out)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        return dict((yaml.safe_load(path.read_text()) or {}).get("scheduler") or {})
    return json.loads((path / "scheduler" / "scheduler_config.json").read_text())


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
