"""RGBA assets: prompts with descriptors and a Z-role tag -> Flux (layer LoRA fused, optional
style LoRAs) -> latent -> transparent decoder -> PNG with real alpha, a provenance sidecar
and a checkerboard contact sheet. Prompt handling, sizes, sampling, the prompts x seeds
sweep and the sheet layout are Conceptor's (blkassist.flux.generate)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.generate import (
    SweepRow,
    encode_prompts,
    load_adapter,
    prompt_items,
    prompt_size,
    sweep,
    versions,
)
from blkassist.probe import sha256_file
from blkassist.stencil_model.preview import over_checkerboard
from blkassist.stencil_model.vae import TransparentVAE, from_flux, load_transparent_vae

log = logging.getLogger(__name__)

ROLES = ("FG", "MG", "BG-overlay")
LAYER_ADAPTER = "layer"


# Key prefixes of a LoRA file's text-encoder parts, in diffusers' and kohya's layouts.
CLIP_PREFIXES = ("text_encoder.", "lora_te1_", "lora_te_")
T5_PREFIXES = ("text_encoder_2.", "lora_te2_", "lora_te3_")


def lora_file_parts(path: Path) -> dict[str, list[str]]:
    """The keys of a LoRA file by the model part they change: "transformer", "text_encoder"
    (CLIP) or "text_encoder_2" (T5); read from the header, no tensor loaded."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # any unreadable file gets the same advice
        raise ModelFileError(f"{path}: not a readable .safetensors LoRA ({error}).") from None
    parts: dict[str, list[str]] = {"transformer": [], "text_encoder": [], "text_encoder_2": []}
    for key in keys:
        if key.startswith(T5_PREFIXES):
            parts["text_encoder_2"].append(key)
        elif key.startswith(CLIP_PREFIXES):
            parts["text_encoder"].append(key)
        else:
            parts["transformer"].append(key)
    return parts


def fuse_layer_lora(pipe, path: str | os.PathLike, scale: float = 1.0) -> dict:
    """Load the frozen LayerDiffuse layer LoRA through diffusers and fuse it into the
    weights (then drop the adapter modules): it is part of the base model from here on, and
    style LoRAs stack on top as usual. Keys for the CLIP text encoder are fused into it too;
    a file with keys diffusers cannot load into Flux (T5) is refused, naming them, rather
    than fused in part."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: layer LoRA not found. Fix: put the published layerlora.safetensors "
            "there, or set stencil.layer_lora to null."
        )
    parts = lora_file_parts(path)
    if parts["text_encoder_2"]:
        keys = parts["text_encoder_2"]
        raise ModelFileError(
            f"{path}: {len(keys)} key(s) change the T5 text encoder, which diffusers' Flux "
            f"LoRA loader cannot apply ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
            "; fusing the rest would silently drop them. Fix: use a layer LoRA without T5 "
            "keys (the published layerlora.safetensors has none)."
        )
    pipe.load_lora_weights(str(path), adapter_name=LAYER_ADAPTER)
    fused = ["transformer"]
    if parts["text_encoder"]:
        if LAYER_ADAPTER not in (getattr(pipe.text_encoder, "peft_config", None) or {}):
            raise ModelFileError(
                f"{path}: {len(parts['text_encoder'])} text-encoder key(s) (e.g. "
                f"{parts['text_encoder'][0]}) did not load into the CLIP text encoder; "
                "refusing to fuse the transformer part alone."
            )
        fused.append("text_encoder")
    pipe.fuse_lora(components=fused, lora_scale=scale, adapter_names=[LAYER_ADAPTER])
    pipe.unload_lora_weights()
    log.info("fused layer LoRA %s at scale %s into the %s", path, scale, " and ".join(fused))
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "scale": scale,
        "fused": True,
        "fused_into": fused,
    }


def decode_rgba(components, vae: TransparentVAE, packed, width, height, augment=True):
    """Packed transformer latents -> one RGBA PIL image."""
    return decode_with_drawing(components, vae, packed, width, height, augment)[0]


def decode_with_drawing(components, vae: TransparentVAE, packed, width, height, augment=True):
    """Packed transformer latents -> (RGBA PIL image, (H, W) luma in [0, 1] of the Flux VAE's
    own decode: what the model drew, before the transparent decoder read alpha into it)."""
    pipe_vae = components.vae
    scale = components.vae_scale_factor
    from diffusers import FluxPipeline

    latent = FluxPipeline._unpack_latents(packed, height, width, scale)
    latent = from_flux(latent, pipe_vae)
    drawn = vae.flux_rgb(pipe_vae, latent)
    rgba = vae.decode(pipe_vae, latent, augment=augment, rgb=drawn)[0].float().clamp(0, 1)
    array = (rgba.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    luma = (drawn[0].float().clamp(0, 1).cpu() * LUMA[:, None, None]).sum(0).numpy()
    return Image.fromarray(array, "RGBA"), luma


LUMA = torch.tensor([0.299, 0.587, 0.114])
BORDER = 0.125  # the band, per side, that a centred asset leaves to its background
INK_LUMA = 0.35  # darker than this in the Flux decode: a stroke


def alpha_profile(alpha: np.ndarray, luma: np.ndarray) -> dict:
    """How an asset's alpha fits what was drawn ((H, W) arrays in [0, 1]): `clear` and
    `opaque`, the shares of all pixels with alpha <= 12/255 and >= 243/255; `border_clear`,
    the share of the outer band (BORDER of each side, where a centred asset shows its
    background) with alpha < 0.1; `ink_opaque` and `ink_alpha`, the share with alpha > 0.9
    and the mean alpha of the stroke pixels (luma < INK_LUMA in the Flux decode);
    `ink_share`, the strokes' share of the image (None and 0 when nothing was inked)."""
    height, width = alpha.shape
    band_y, band_x = max(1, round(height * BORDER)), max(1, round(width * BORDER))
    border = np.ones_like(alpha, dtype=bool)
    border[band_y:-band_y, band_x:-band_x] = False
    ink = luma < INK_LUMA
    return {
        "clear": float((alpha <= 12 / 255).mean()),
        "opaque": float((alpha >= 243 / 255).mean()),
        "border_clear": float((alpha[border] < 0.1).mean()),
        "ink_opaque": float((alpha[ink] > 0.9).mean()) if ink.any() else None,
        "ink_alpha": float(alpha[ink].mean()) if ink.any() else None,
        "ink_share": float(ink.mean()),
    }


def load_style_loras(pipe, loras) -> tuple[list[str], list[dict]]:
    """Style LoRAs as adapters style0, style1, ... at their scales: (names, records)."""
    names, records = [], []
    for index, lora in enumerate(loras):
        name = f"style{index}"
        digest = load_adapter(pipe, lora["file"], lora.get("scale", 1.0), name=name)
        names.append(name)
        records.append({"file": str(lora["file"]), "sha256": digest,
                        "scale": lora.get("scale", 1.0)})  # fmt: skip
    if names:
        pipe.set_adapters(names, adapter_weights=[r["scale"] for r in records])
    return names, records


def asset_rows(prompts, role: str, template: str, size, aspect, megapixels, multiple):
    """The sweep's rows: each prompt with its Z-role (checked) in the template."""
    rows = []
    for index, item in enumerate(prompt_items(prompts)):
        item_role = item.get("role", role)
        if item_role not in ROLES:
            raise ConfigError(f"prompt {index}: role {item_role!r} is not one of {ROLES}")
        text = template.format(prompt=item["prompt"], role=item_role)
        width, height = prompt_size(item, size, aspect, megapixels, multiple)
        label = f"{index:02d} [{item_role}] {item['prompt']}"
        rows.append(SweepRow(item["prompt"], text, width, height, label,
                             {"role": item_role, "text": text}))  # fmt: skip
    return rows


def generate_assets(
    components,
    vae: TransparentVAE,
    prompts: list[str | dict],
    output_dir: str | os.PathLike,
    *,
    vae_record: dict,
    layer_lora: str | os.PathLike | None = None,
    loras: list[dict] | tuple = (),
    seeds,
    aspect: float | str,
    megapixels: float,
    steps: int,
    guidance: float,
    role: str,
    template: str,
    max_sequence_length: int,
    augment: bool,
    size: tuple[int, int] | None = None,  # not set: aspect and megapixels decide
    licences: list[dict] | None = None,
) -> list[dict]:
    """RGBA PNGs for every prompt and seed in `output_dir`, with sidecars, `assets.json`
    and `contact_sheet.png` (over a checkerboard). A prompt may be a dict with its own
    "role", "aspect" or "size". Style LoRAs are removed again afterwards; the layer LoRA, once
    fused, stays in `components`. The settings are a stencil.assets.NAME section's, schema
    defaults filled (config.section_with_defaults outside a workflow)."""
    pipe = components.pipeline()
    multiple = math.lcm(components.vae_scale_factor * 2, vae.spec.size_multiple)
    rows = asset_rows(prompts, role, template, size, aspect, megapixels, multiple)
    layer_record = fuse_layer_lora(pipe, layer_lora) if layer_lora else None
    names, style_records = load_style_loras(pipe, loras)

    def finish(packed, row: SweepRow):
        """Latents -> the RGBA asset, how its alpha fits the strokes, its checkerboard cell."""
        image, drawn = decode_with_drawing(components, vae, packed, row.width, row.height, augment)
        alpha = np.asarray(image)[..., 3] / 255
        fields = {"augment": augment, "alpha": alpha_profile(alpha, drawn)}
        return image, fields, over_checkerboard(image)

    shared = {"layer_lora": layer_record, "loras": style_records, "transparent_vae": vae_record,
              "model": components.describe(), "licences": licences,
              "versions": versions()}  # fmt: skip
    try:
        encoded = encode_prompts(components, pipe, [r.text for r in rows], max_sequence_length)
        rendering = {"steps": steps, "guidance": guidance,
                     "max_sequence_length": max_sequence_length}  # fmt: skip
        records = sweep(pipe, rows, encoded, output_dir, seeds=seeds, rendering=rendering,
                        shared=shared, index="assets.json", output_type="latent",
                        finish=finish)  # fmt: skip
    finally:
        if names:
            pipe.delete_adapters(names)
    log.info("%d RGBA assets in %s", len(records), output_dir)
    return records


def vae_identity(spec_path: str, weights: str) -> dict:
    """What a sidecar records about the transparent VAE (checked to exist first)."""
    if not Path(weights).is_file():
        raise ModelFileError(
            f"{weights}: transparent VAE weights not found. Fix: set stencil.vae.weights to "
            "the published TransparentVAE.pth, or to null to train the tiny one."
        )
    return {"spec": str(spec_path), "weights": str(weights), "sha256": sha256_file(weights)}


def generate_run(
    model: str,
    vae_spec: str,
    vae_weights: str,
    prompts: list,
    output_dir: str,
    lock_dir: str,
    threads: int,
    **options,
) -> list[dict]:
    """A workflow job: lease a device, load Flux and the transparent VAE, generate."""
    from blkassist.devices import lease_device
    from blkassist.flux.loader import load_flux

    torch.set_num_threads(max(1, threads))
    record = vae_identity(vae_spec, vae_weights)  # checks the file before the model loads
    with lease_device(lock_dir) as lease:
        components = load_flux(model, lease.torch_device)
        vae = load_transparent_vae(
            vae_spec, vae_weights, lease.torch_device, components.dtype, components.vae
        )
        record["bundled_flux_vae"] = vae.bundled_flux_vae
        return generate_assets(components, vae, prompts, output_dir, vae_record=record, **options)
