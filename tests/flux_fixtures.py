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


def vae_in_ldm_layout(state: dict) -> dict:
    """A diffusers AutoencoderKL state dict under the original (LDM / BFL ae.safetensors)
    names: the inverse of diffusers' convert_ldm_vae_checkpoint, as test data."""
    import re

    ups = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))

    def up(match) -> str:  # diffusers counts decoder levels from the bottom, LDM from the top
        return f"decoder.up.{ups - 1 - int(match[1])}.{match[2]}"

    renames = [
        (r"(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_([qkv])\.", r"\1.mid.attn_1.\2."),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.",
         r"\1.mid.attn_1.proj_out."),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
         r"encoder.down.\1.downsample.conv."),
        (r"decoder\.up_blocks\.(\d+)\.(resnets)\.(\d+)\.",
         lambda m: up(m).replace("resnets", "block") + f".{m[3]}."),
        (r"decoder\.up_blocks\.(\d+)\.(upsamplers)\.0\.conv\.",
         lambda m: up(m).replace("upsamplers", "upsample") + ".conv."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
    ]  # fmt: skip
    out = {}
    for key, tensor in state.items():
        name = key
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # linear -> 1x1 convolution
        out[name] = tensor.contiguous()
    return out


def write_comfyui_tree(folder: Path, diffusers_folder: Path, transformer_dtype=None) -> Path:
    """The tiny Flux as a ComfyUI user has it: BFL/LDM single files under models/, the
    tokenizers in ComfyUI's comfy/ source tree; and the tiny model's configs beside it in the
    diffusers layout (what resources/flux/FLUX.1-dev is for the real model)."""
    import shutil

    from safetensors.torch import save_file

    from blkassist.flux.loader import load_flux
    from blkassist.flux.single_file import diffusers_to_bfl

    model = load_flux(diffusers_folder)
    transformer = diffusers_to_bfl(model.transformer.state_dict(), model.transformer.config)
    if transformer_dtype is not None:
        transformer = {k: v.to(transformer_dtype) for k, v in transformer.items()}
    clip = {f"text_model.{k}": v for k, v in model.text_encoder.state_dict().items()}
    t5 = {k: v for k, v in model.text_encoder_2.state_dict().items() if "embed_tokens" not in k}
    files = {
        "models/unet/flux1-dev.safetensors": transformer,
        "models/vae/ae.safetensors": vae_in_ldm_layout(model.vae.state_dict()),
        "models/clip/clip_l.safetensors": clip,
        "models/clip/t5xxl_fp16.safetensors": t5,
    }
    for name, state in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    model.tokenizer.save_pretrained(folder / "comfy" / "sd1_tokenizer")
    model.tokenizer_2.save_pretrained(folder / "comfy" / "text_encoders" / "t5_tokenizer")
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        shutil.copytree(
            diffusers_folder / part,
            folder.parent / "tiny-config" / part,
            ignore=shutil.ignore_patterns("*.safetensors"),
            dirs_exist_ok=True,
        )
    return folder
