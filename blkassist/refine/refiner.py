"""Refiners: uint8 windows in, refined uint8 windows of the same shape out.

The tile jobs only know this interface, so tests plug in deterministic stand-ins. The
production refiner is Flux img2img with the texture LoRA, loaded once per job, sampling
several windows per forward pass. Its sampler is driven here (not through diffusers'
FluxImg2ImgPipeline), so that a pass's noise level and steps mean the same at every tile
size (sigmas.py), and so that each window starts from the noise its source gives (by
default its part of the pass's canvas-wide noise field, noise.py): a window's result does
not depend on which other windows share its forward pass.

Loading keeps the device's peak at what sampling needs: the LoRA is loaded (and, for an
8-bit transformer, fused) on the host, the text encoders visit the device to encode the
prompt and leave it, then the transformer moves in (quantised block by block on the way)
with the VAE, which encodes and decodes one window at a time.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from blkassist.refine.noise import NoiseSource
from blkassist.refine.plan import SIZE_MULTIPLE
from blkassist.refine.sigmas import pass_schedule, pass_sigmas

log = logging.getLogger(__name__)


class Refiner(Protocol):
    def refine(
        self,
        windows: np.ndarray,
        noise: Sequence[NoiseSource],
        denoise: float,
        prompt: str | None = None,
    ) -> np.ndarray:
        """(N, H, W, C) uint8 windows, one noise source each -> refined (N, H, W, C) uint8;
        `prompt` (one encoded when the refiner was made) replaces the pass's prompt."""
        ...

    def describe(self, denoise: float) -> dict:
        """What provenance records about the refiner for a pass at `denoise`."""
        ...


def _pad_to_multiple(windows: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    height, width = windows.shape[1:3]
    pad_y, pad_x = -height % multiple, -width % multiple
    if pad_y or pad_x:
        mode = "reflect" if min(height, width) > max(pad_y, pad_x) else "edge"
        windows = np.pad(windows, ((0, 0), (0, pad_y), (0, pad_x), (0, 0)), mode=mode)
    return windows, height, width


class FluxRefiner:
    """Flux img2img at a given denoise, with an optional LoRA, on the components' device."""

    def __init__(
        self,
        components,
        *,
        # murals.NAME.refine's settings, schema defaults filled: none of their own here
        lora: str | os.PathLike | None,
        lora_scale: float,
        prompt: str,
        steps: int,
        guidance: float,
        max_sequence_length: int,
        quantize: bool,
        release_text_encoders: bool = False,
        other_prompts: Sequence[str] = (),
    ):
        import torch

        from blkassist.flux.generate import load_adapter
        from blkassist.flux.loader import quantize_transformer

        self.components = components
        pipe = components.pipeline()
        self.lora = None
        if lora is not None:
            digest = load_adapter(pipe, lora, lora_scale, name="texture")
            self.lora = {"file": str(lora), "sha256": digest, "scale": lora_scale}
        if quantize:
            if self.lora is not None:
                # diffusers cannot load a LoRA onto 8-bit weights, and the texture LoRA is
                # fixed for the whole job anyway (no adapter cost per forward either).
                pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
                pipe.unload_lora_weights()
                self.lora["fused_before_quantizing"] = True
            quantize_transformer(components)
        components.to_device("text_encoder", "text_encoder_2")
        # Every prompt the job may use is encoded now: the encoders leave the device after.
        self.encoded = {}
        with torch.no_grad():
            for text in dict.fromkeys([prompt, *other_prompts]):
                self.encoded[text] = pipe.encode_prompt(
                    text, prompt_2=None, device=components.device,
                    max_sequence_length=max_sequence_length,
                )  # fmt: skip
        del pipe  # it holds the text encoders too
        if release_text_encoders:
            components.release_text_encoders()
        else:
            components.park_text_encoders()
        components.to_device("transformer", "vae")
        components.vae.enable_slicing()  # one window at a time through the VAE
        self.prompt, self.steps, self.guidance = prompt, steps, guidance
        self.max_sequence_length = max_sequence_length
        self.scheduler_config = dict(components.scheduler.config)

    def describe(self, denoise: float) -> dict:
        return {
            "kind": "flux-img2img",
            **pass_schedule(denoise, self.steps, self.scheduler_config),
            "guidance": self.guidance,
            "prompt": self.prompt,
            "max_sequence_length": self.max_sequence_length,
            "lora": self.lora,
            "flux": self.components.describe(),
        }

    def refine(
        self,
        windows: np.ndarray,
        noise: Sequence[NoiseSource],
        denoise: float,
        prompt: str | None = None,
    ) -> np.ndarray:
        import torch
        from diffusers import FluxPipeline

        if prompt is not None and prompt not in self.encoded:
            raise ValueError(f"prompt {prompt!r} was not encoded when the refiner was made")
        embeds, pooled, text_ids = self.encoded[self.prompt if prompt is None else prompt]
        if denoise == 0:  # no noise, no steps: the windows as they are (no VAE round trip)
            return windows.copy()
        device, dtype = self.components.device, self.components.dtype
        vae, factor = self.components.vae, self.components.vae_scale_factor
        colour = windows[..., :3]
        padded, height, width = _pad_to_multiple(colour, SIZE_MULTIPLE)
        count = padded.shape[0]
        sigmas = pass_sigmas(denoise, self.steps, self.scheduler_config)
        with torch.no_grad():
            pixels = torch.from_numpy(padded).to(device).permute(0, 3, 1, 2)
            pixels = pixels.to(dtype) / 127.5 - 1
            clean = vae.encode(pixels).latent_dist.mode()
            clean = (clean - vae.config.shift_factor) * vae.config.scaling_factor
            channels, lat_h, lat_w = clean.shape[1:]
            starting = np.stack(
                [source.latents(channels, lat_h, lat_w, factor) for source in noise]
            )
            start = float(sigmas[0])
            latents = start * torch.from_numpy(starting).to(device) + (1 - start) * clean.float()
            latents = FluxPipeline._pack_latents(latents, count, channels, lat_h, lat_w)
            image_ids = FluxPipeline._prepare_latent_image_ids(
                count, lat_h // 2, lat_w // 2, device, dtype
            )
            guidance = None
            if self.components.transformer.config.guidance_embeds:
                guidance = torch.full((count,), self.guidance, device=device, dtype=torch.float32)
            embeds = embeds.to(device).expand(count, -1, -1)
            pooled = pooled.to(device).expand(count, -1)
            for sigma, next_sigma in itertools.pairwise(sigmas):
                velocity = self.components.transformer(
                    hidden_states=latents.to(dtype),
                    timestep=torch.full((count,), sigma, device=device, dtype=dtype),
                    guidance=guidance,
                    pooled_projections=pooled,
                    encoder_hidden_states=embeds,
                    txt_ids=text_ids.to(device),
                    img_ids=image_ids,
                    return_dict=False,
                )[0]
                latents = latents + float(next_sigma - sigma) * velocity.float()
            latents = FluxPipeline._unpack_latents(latents, lat_h * factor, lat_w * factor, factor)
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
            decoded = vae.decode(latents.to(dtype), return_dict=False)[0]
            decoded = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            out = decoded.permute(0, 2, 3, 1).cpu().numpy()[:, :height, :width]
        if windows.shape[3] == 4:  # the alpha band is the artist's: never redrawn
            out = np.concatenate([out, windows[..., 3:]], axis=3)
        return np.ascontiguousarray(out)


def load_flux_refiner(
    model: str,
    device: str,
    *,
    quantize: bool,
    lora: str | None,
    **options,
) -> FluxRefiner:
    """Load Flux and the LoRA once per job, in the order that keeps the device's peak
    lowest (the parts wait on the host until FluxRefiner places them)."""
    from blkassist.flux.loader import load_flux

    components = load_flux(model, device, defer=True)
    return FluxRefiner(
        components, lora=lora, quantize=quantize, release_text_encoders=True, **options
    )
