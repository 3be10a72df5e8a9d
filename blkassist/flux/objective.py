"""The flow-matching objective Flux was trained with, on packed latents.

x_s = (1 - s) x_0 + s noise; the transformer, given x_s and s, predicts the velocity
noise - x_0. Noise levels s are drawn logit-normal (diffusers' SD3/Flux density) and
shifted for the image's token count exactly as FluxPipeline's sampling schedule shifts
them, so training and sampling see the same levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling


def sample_sigmas(recipe, batch: int, tokens: int, scheduler_config, generator) -> torch.Tensor:
    """Noise levels in (0, 1): diffusers' SD3/Flux density, then Flux's token-count shift."""
    u = compute_density_for_timestep_sampling(
        recipe.timestep_sampling,
        batch,
        recipe.logit_mean,
        recipe.logit_std,
        recipe.mode_scale,
        generator=generator,
    )
    if not recipe.resolution_shift:
        return u
    mu = calculate_shift(
        tokens,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor):
    """The interpolation x_s = (1 - s) x_0 + s noise (fp32)."""
    s = sigmas.to(latents.device, torch.float32).view(-1, 1, 1, 1)
    return (1 - s) * latents.float() + s * noise.float()


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the transformer learns to predict: d x_s / d s."""
    return (noise - latents).float()


def flow_matching_loss(
    transformer,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    guidance: float,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean squared error of the predicted velocity at noise levels `sigmas`; latents are
    scaled VAE latents (B, 16, h, w), packed here as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    device, dtype = latents.device, prompt_embeds.dtype
    noisy = noisy_latents(latents, noise, sigmas)
    packed = FluxPipeline._pack_latents(noisy.to(dtype), b, c, h, w)
    image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    extra = {}
    if transformer.config.guidance_embeds:
        extra["guidance"] = torch.full((b,), guidance, device=device, dtype=torch.float32)
    # FluxPipeline passes timestep / 1000, i.e. the sigma itself.
    timestep = sigmas.to(device, torch.float32).view(b).to(dtype)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        packed_prediction = transformer(
            hidden_states=packed,
            timestep=timestep,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
            **extra,
        )[0]
    # _unpack_latents wants pixel sizes: a scale factor of 1 makes them the latent sizes.
    prediction = FluxPipeline._unpack_latents(packed_prediction, h, w, 1)
    return F.mse_loss(prediction.float(), velocity_target(latents, noise))
