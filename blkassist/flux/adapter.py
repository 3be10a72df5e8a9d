"""The trainable adapter on Flux's transformer: added, read out, saved as a diffusers
LoRA file whose metadata (rank, alpha, targets) makes it reload at its trained strength."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from diffusers import FluxPipeline
from diffusers.training_utils import cast_training_params
from peft import LoKrConfig, LoraConfig
from peft.utils import get_peft_model_state_dict

from blkassist.flux.kohya import export_kohya

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def add_adapter(transformer, recipe) -> list[torch.nn.Parameter]:
    """Inject the trainable adapter (fp32, whatever the base's dtype; bias never trained)
    and return its parameters in a fixed order."""
    targets = list(recipe.target_modules)
    if recipe.adapter == "lokr":
        config = LoKrConfig(
            r=recipe.rank,
            alpha=recipe.alpha,
            target_modules=targets,
            decompose_factor=recipe.lokr_decompose_factor,
            rank_dropout=recipe.dropout,
        )
    else:
        config = LoraConfig(
            r=recipe.rank,
            lora_alpha=recipe.alpha,
            lora_dropout=recipe.dropout,
            bias="none",
            target_modules=targets,
            init_lora_weights="gaussian",
        )
    transformer.add_adapter(config)
    cast_training_params(transformer, torch.float32)
    return [p for p in transformer.parameters() if p.requires_grad]


def adapter_state(transformer) -> dict[str, torch.Tensor]:
    """The adapter in peft's key layout (what diffusers' LoRA files hold), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(transformer).items()}


def save_adapter(transformer, path: str | os.PathLike, save_dtype: str) -> Path:
    """A .safetensors that FluxPipeline.load_lora_weights (LoKr: load_lora_adapter) loads,
    with the adapter's config in its metadata; a LoRA also gets its kohya / ComfyUI copy
    beside it (NAME.kohya.safetensors)."""
    path = Path(path)
    dtype = SAVE_DTYPES[save_dtype]
    state = {k: v.to(dtype).contiguous() for k, v in adapter_state(transformer).items()}
    metadata = transformer.peft_config["default"].to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
        FluxPipeline.save_lora_weights(
            tmp,
            transformer_lora_layers=state,
            weight_name=path.name,
            transformer_lora_adapter_metadata=metadata,
        )
        os.replace(Path(tmp) / path.name, path)
    if isinstance(transformer.peft_config["default"], LoraConfig):
        export_kohya(path)
    return path
