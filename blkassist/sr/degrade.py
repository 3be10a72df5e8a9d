"""Real-ESRGAN's two-stage degradation (blur, resize, noise, JPEG, twice, then a sinc
filter and JPEG in random order), built from basicsr's own kernels and operators.

Kernels are drawn per sample on the CPU with numpy's global generator (basicsr's kernel
functions use it); the rest runs batched on the training device with torch's generator.
The trainer saves and restores both, so a resumed run degrades exactly as it would have.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from blkassist.compat import basicsr_module
from blkassist.errors import ConfigError

KERNELS = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass
class DegradationSettings:
    """Defaults of Real-ESRGAN's x4plus training and fine-tuning options."""

    scale: int = 4
    kernel_size: int = 21
    kernel_list: list[str] = field(default_factory=lambda: list(KERNELS))
    kernel_prob: list[float] = field(default_factory=lambda: list(KERNEL_PROB))
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    final_sinc_prob: float = 0.8

    @classmethod
    def from_config(cls, values: dict | None, key: str = "degradation") -> DegradationSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(
                f"{key}: unknown degradation setting(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**(values or {}))

    def narrowest_blurred_side(self, gt_size: int) -> int:
        """The narrowest image a blur kernel meets: after the first resize (when a second
        blur may follow) or at the output size (the final sinc filter)."""
        shrink = self.resize_range[0] if self.resize_prob[1] > 0 else 1.0
        first = int(gt_size * min(shrink, 1.0)) if self.second_blur_prob > 0 else gt_size
        return min(first, gt_size // self.scale)

    def check_patch_size(self, gt_size: int, key: str) -> None:
        """basicsr's filter2D pads by half a kernel with reflection, which fails on an
        image that is not wider than that: refuse such patch sizes before training."""
        reach = self.kernel_size // 2
        if self.narrowest_blurred_side(gt_size) > reach:
            return
        sizes = range(gt_size, 4097, 4)
        fits = next((size for size in sizes if self.narrowest_blurred_side(size) > reach), None)
        bigger = f"gt_size >= {fits} or " if fits else ""
        raise ConfigError(
            f"{key}.gt_size: {gt_size} px patches shrink to "
            f"{self.narrowest_blurred_side(gt_size)} px in the degradation, too narrow for its "
            f"{self.kernel_size}-tap blur (needs more than {reach} px); use {bigger}a larger "
            f"{key}.degradation.resize_range[0]"
        )


def bicubic_reduce(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The clean reduction of a finished scan: antialiased bicubic to 1/scale, then 8-bit
    quantisation as in a saved image. (N, 3, H, W) in [0, 1]."""
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True)
    return (lr.clamp(0, 1) * 255).round() / 255


def _kernel(settings: DegradationSettings, sinc_prob: float, sigma, pad_to: int) -> np.ndarray:
    degradations = basicsr_module("basicsr.data.degradations")
    size = random.choice(range(7, settings.kernel_size + 1, 2))
    if np.random.uniform() < sinc_prob:
        cutoff = (
            np.random.uniform(np.pi / 3, np.pi)
            if size < 13
            else np.random.uniform(np.pi / 5, np.pi)
        )
        kernel = degradations.circular_lowpass_kernel(cutoff, size, pad_to=False)
    else:
        kernel = degradations.random_mixed_kernels(
            settings.kernel_list, settings.kernel_prob, size, sigma, sigma,
            [-math.pi, math.pi], settings.betag_range, settings.betap_range, noise_range=None,
        )  # fmt: skip
    pad = (pad_to - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def sample_kernels(settings: DegradationSettings, count: int) -> dict[str, torch.Tensor]:
    """Per-sample blur kernels for both stages and the final sinc (or identity) filter."""
    degradations = basicsr_module("basicsr.data.degradations")
    size = settings.kernel_size
    first = [_kernel(settings, settings.sinc_prob, settings.blur_sigma, size) for _ in range(count)]
    second = [
        _kernel(settings, settings.sinc_prob2, settings.blur_sigma2, size) for _ in range(count)
    ]
    final = []
    for _ in range(count):
        if np.random.uniform() < settings.final_sinc_prob:
            cutoff = np.random.uniform(np.pi / 3, np.pi)
            final.append(degradations.circular_lowpass_kernel(cutoff, size, pad_to=size))
        else:
            pulse = np.zeros((size, size))
            pulse[size // 2, size // 2] = 1
            final.append(pulse)
    as_tensor = lambda ks: torch.from_numpy(np.stack(ks)).float()  # noqa: E731
    return {"kernel1": as_tensor(first), "kernel2": as_tensor(second), "sinc": as_tensor(final)}


def _factor(probs, scale_range) -> float:
    kind = random.choices(["up", "down", "keep"], probs)[0]
    if kind == "up":
        return np.random.uniform(1, scale_range[1])
    if kind == "down":
        return np.random.uniform(scale_range[0], 1)
    return 1.0


def _resize(image: torch.Tensor, size=None, factor=None) -> torch.Tensor:
    mode = random.choice(["area", "bilinear", "bicubic"])
    return F.interpolate(image, size=size, scale_factor=factor, mode=mode)


def _noise(image, gaussian_prob, sigma_range, poisson_range, gray_prob):
    degradations = basicsr_module("basicsr.data.degradations")
    if np.random.uniform() < gaussian_prob:
        return degradations.random_add_gaussian_noise_pt(
            image, sigma_range=sigma_range, clip=True, rounds=False, gray_prob=gray_prob
        )
    return degradations.random_add_poisson_noise_pt(
        image, scale_range=poisson_range, gray_prob=gray_prob, clip=True, rounds=False
    )


class Degrader:
    """Turns a batch of HR patches (N, 3, H, W in [0, 1]) into their LR counterparts."""

    def __init__(self, settings: DegradationSettings, device: torch.device):
        self.settings = settings
        self.device = device
        self.jpeg = (
            basicsr_module("basicsr.utils.diffjpeg").DiffJPEG(differentiable=False).to(device)
        )
        self._filter2d = basicsr_module("basicsr.utils.img_process_util").filter2D

    def filter2d(self, image, kernel):
        return self._filter2d(image.contiguous(), kernel)  # basicsr reshapes with view()

    def _jpeg(self, image, quality_range):
        quality = image.new_zeros(image.size(0)).uniform_(*quality_range)
        return self.jpeg(torch.clamp(image, 0, 1), quality=quality)

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, kernels: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.settings
        k = {name: value.to(self.device) for name, value in kernels.items()}
        height, width = hr.shape[2:]
        out = self.filter2d(hr, k["kernel1"])
        out = _resize(out, factor=_factor(s.resize_prob, s.resize_range))
        out = _noise(
            out, s.gaussian_noise_prob, s.noise_range, s.poisson_scale_range, s.gray_noise_prob
        )
        out = self._jpeg(out, s.jpeg_range)
        if np.random.uniform() < s.second_blur_prob:
            out = self.filter2d(out, k["kernel2"])
        target = (int(height / s.scale), int(width / s.scale))
        factor = _factor(s.resize_prob2, s.resize_range2)
        middle = (max(1, int(target[0] * factor)), max(1, int(target[1] * factor)))
        out = _resize(out, size=middle)
        out = _noise(
            out, s.gaussian_noise_prob2, s.noise_range2, s.poisson_scale_range2, s.gray_noise_prob2
        )
        # The final sinc filter and JPEG come in either order.
        if np.random.uniform() < 0.5:
            out = self.filter2d(_resize(out, size=target), k["sinc"])
            out = self._jpeg(out, s.jpeg_range2)
        else:
            out = self._jpeg(out, s.jpeg_range2)
            out = self.filter2d(_resize(out, size=target), k["sinc"])
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.0
