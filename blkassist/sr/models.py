"""Upscalers behind one interface: uint8 tiles in, uint8 tiles `scale` times larger out.

Neural models are RRDBNet (blkassist.sr.rrdbnet: basicsr's network and state-dict names,
without importing basicsr) loaded from a local .pth in the official Real-ESRGAN layout;
`lanczos` (blkassist.sr.lanczos) needs no weights. Every conversion between uint8 and
floating point happens on the model's device, not on the CPU.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from blkassist.errors import ModelFileError
from blkassist.sr.lanczos import LanczosUpscaler
from blkassist.sr.rrdbnet import RRDBNet
from blkassist.sr.weights import existing, generator, rrdbnet_arch, unreadable

_ALPHA_FLOOR = 1.0 / 512  # below this the colour of a pixel is meaningless


def rrdbnet_params(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator state dict from a Real-ESRGAN .pth (params_ema preferred) or a
    .safetensors file, loaded without executing any code from the file."""
    path = existing(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise unreadable(path, error) from None
    return generator(loaded, path)


def build_rrdbnet(params: dict[str, torch.Tensor], path="<state dict>",
                  network: type[torch.nn.Module] = RRDBNet) -> torch.nn.Module:  # fmt: skip
    """An RRDBNet whose shape is read off the weights, loaded strictly. `network` is this
    package's (inference) or basicsr's class with the same names (training)."""
    arch = rrdbnet_arch({key: tuple(tensor.shape) for key, tensor in params.items()}, path)
    model = network(**arch)
    try:
        model.load_state_dict(params, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: weights do not fit RRDBNet {arch}: {error}") from None
    model.native_scale = arch["scale"]
    return model.eval()


class NeuralUpscaler:
    """An RRDBNet on one device; `scale` other than the model's own is a resize after it."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", precision: str = "auto"):
        self.device = torch.device(device)
        half = precision == "fp16" or (precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.float16 if half else torch.float32
        self.native_scale = model.native_scale
        self.model = model.to(self.device, self.dtype)

    @classmethod
    def from_file(cls, path, device="cpu", precision="auto") -> NeuralUpscaler:
        return cls(build_rrdbnet(rrdbnet_params(path), path), device, precision)

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray, scale: int) -> np.ndarray:
        """(N, h, w, C) uint8 with C = 3 or 4 -> (N, h*scale, w*scale, C) uint8."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).to(self.dtype) / 255
        size = (tiles.shape[1] * scale, tiles.shape[2] * scale)
        rgb, alpha = batch[:, :3], batch[:, 3:]
        if alpha.shape[1]:
            rgb = rgb * alpha  # premultiplied: hidden colour under alpha 0 cannot bleed
        out = self.model(rgb).float()
        if scale != self.native_scale:
            out = F.interpolate(out, size=size, mode="bicubic", antialias=True)
        if alpha.shape[1]:
            up_alpha = F.interpolate(alpha.float(), size=size, mode="bicubic").clamp(0, 1)
            visible = up_alpha > _ALPHA_FLOOR
            out = torch.where(visible, out / up_alpha.clamp_min(_ALPHA_FLOOR), 0)
            out = torch.cat([out, up_alpha], dim=1)
        out = (out.clamp(0, 1) * 255).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()


def load_upscaler(model: str, weights: str | os.PathLike | None, device="cpu", precision="auto"):
    if model == "lanczos":
        return LanczosUpscaler()
    return NeuralUpscaler.from_file(weights, device, precision)


__all__ = ["LanczosUpscaler", "NeuralUpscaler", "build_rrdbnet", "load_upscaler", "rrdbnet_params"]
