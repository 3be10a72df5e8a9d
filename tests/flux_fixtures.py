"""Paths, recipes and helpers shared by the Flux tests: the checkout's model specs and
schema (the library itself never reads the checkout)."""

from __future__ import annotations

from pathlib import Path

from blkassist.flux.recipe import Recipe, schema_recipe

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
TINY_SPEC = REPO / "resources" / "flux" / "tiny.yaml"
FULL_RANDOM_SPEC = REPO / "resources" / "flux" / "flux1-dev-random.yaml"
OVERFIT_SPEC = REPO / "tests" / "data" / "flux_overfit.yaml"
TINY_VAE_SPEC = REPO / "resources" / "stencil" / "tiny_vae.yaml"
PUBLISHED_VAE_SPEC = REPO / "resources" / "stencil" / "transparent_vae.yaml"

# CPU-sized settings shared by the tests (the schema fills the rest).
SMALL = {
    "quantize": False,
    "gradient_checkpointing": False,
    "max_sequence_length": 32,
    "sample_size": [64, 64],
    "sample_steps": 2,
    "sample_seeds": [0],
    "sample_count": 1,
    "validation_images": 2,
    "steps": 4,
    "save_every": 2,
}


def recipe(kind: str = "conceptor", **overrides) -> Recipe:
    """The recipe a config with SMALL and `overrides` under KIND.runs.RUN.recipe gives."""
    return schema_recipe(kind, {**SMALL, **overrides}, SCHEMA)


def random_lora_file(folder: Path, name: str, seed: int, text_encoder: bool = False) -> Path:
    """A LoRA for the tiny Flux in the diffusers file format, with weights big enough to
    change the image; with `text_encoder`, it changes the CLIP text encoder too."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from blkassist.flux.loader import load_flux

    components = load_flux(TINY_SPEC)
    torch.manual_seed(seed)
    parts = {"transformer": ["to_q", "to_k", "to_v", "to_out.0"]}
    if text_encoder:
        parts["text_encoder"] = ["q_proj", "k_proj", "v_proj", "out_proj"]
    layers = {}
    for part, targets in parts.items():
        model = getattr(components, part)
        config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets)
        if part == "transformer":
            model.add_adapter(config)
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config, model)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "lora_" in key:
                    param.normal_(0, 0.3)
        layers[f"{part}_lora_layers"] = get_peft_model_state_dict(model)
    FluxPipeline.save_lora_weights(folder, weight_name=name, **layers)
    return folder / name


def assert_same_adapter_and_ema(a: dict, b: dict) -> None:
    """Two trainers' state_dict()s hold bit-identical adapter and EMA weights."""
    import torch

    for name, tensor in a["adapter"].items():
        assert torch.equal(tensor, b["adapter"][name]), name
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"], strict=True):
        assert torch.equal(x, y)


class _RunsCode:
    """Unpickling this runs `touch MARKER`: what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def plant_code_running_checkpoint(path, marker) -> None:
    """Overwrite a checkpoint with a pickle that creates `marker` when fully unpickled."""
    import torch

    torch.save({"step": 1, "payload": _RunsCode(marker)}, path)
