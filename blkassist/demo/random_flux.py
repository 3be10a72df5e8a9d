"""The random Flux of a spec file (`kind: random`, e.g. resources/flux/tiny.yaml): the same
classes and wiring as Flux.1-dev at any size, random weights from a seed, built offline.
Demos and tests load it through blkassist.flux.loader.load_flux like real weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from blkassist.demo import DEMO_KEY
from blkassist.demo.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
from blkassist.flux.folder import PARTS
from blkassist.flux.loader import load_flux
from blkassist.fsutil import atomic_path


def random_parts(spec: dict, device: torch.device, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    clip = CLIPTextConfig(
        **{
            "vocab_size": len(tokenizer),
            **spec["text_encoder"],
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    t5 = T5Config(
        **{
            "vocab_size": len(tokenizer_2),
            **spec["text_encoder_2"],
            "pad_token_id": tokenizer_2.pad_token_id,
            "eos_token_id": tokenizer_2.eos_token_id,
            "decoder_start_token_id": tokenizer_2.pad_token_id,
        }
    )
    builders = {
        "transformer": lambda: FluxTransformer2DModel(**spec.get("transformer", {})),
        "vae": lambda: AutoencoderKL(**spec["vae"]),
        "text_encoder": lambda: CLIPTextModel(clip),
        "text_encoder_2": lambda: T5EncoderModel(t5),
    }
    parts = {
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec.get("scheduler", {})),
    }
    seed = int(spec.get("seed", 0))
    default = torch.get_default_dtype()
    try:
        # Built in the dtype they run in: a full-size transformer never exists in fp32.
        torch.set_default_dtype(dtype)
        for offset, (part, build) in enumerate(builders.items()):
            torch.manual_seed(seed + offset)  # each part independent of the others' sizes
            with torch.device(device):
                parts[part] = build()
    finally:
        torch.set_default_dtype(default)
    return parts


def spec_identity(spec: dict) -> dict[str, str]:
    """Each part's identity: a hash of the spec, less the demo marker (what a model is
    for does not change its weights)."""
    text = json.dumps({k: v for k, v in spec.items() if k != DEMO_KEY}, sort_keys=True)
    return {
        part: "random-" + hashlib.sha256(f"{part}:{text}".encode()).hexdigest()[:16]
        for part in PARTS
    }


def save_random_flux(spec_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Build the random model of a spec (fp32, CPU) and save it as a diffusers folder."""
    components = load_flux(spec_path, "cpu", torch.float32)
    with atomic_path(folder) as tmp:
        components.pipeline().save_pretrained(tmp)
    return Path(folder)
