"""The kohya / ComfyUI layout of a Flux LoRA, written beside every diffusers LoRA file.

ComfyUI, Forge, A1111-Forge and kohya's sd-scripts read Flux LoRAs named after the original
(BFL) modules: `lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight`, `.lora_up.weight`
and `.alpha`, where one Linear computes q, k and v together (and, in a single block, the MLP
input too). A diffusers LoRA has separate to_q / to_k / to_v adapters; they fuse exactly:
the down matrices stack (rank r_q + r_k + r_v) and the up matrices sit block-diagonally in
the fused output rows, zero elsewhere, so the fused product is the three deltas side by
side. The alpha tensor carries the LoRA scale: kohya applies alpha / rank(down).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from blkassist.errors import ConfigError

if TYPE_CHECKING:
    import torch

# diffusers module (regex) -> (BFL module, slot in a fused Linear or None)
_DOUBLE = r"transformer_blocks\.(\d+)\."
_SINGLE = r"single_transformer_blocks\.(\d+)\."
_MAPPING = [
    (_DOUBLE + r"attn\.to_([qkv])$", "double_blocks.{0}.img_attn.qkv", "{1}"),
    (_DOUBLE + r"attn\.add_([qkv])_proj$", "double_blocks.{0}.txt_attn.qkv", "{1}"),
    (_DOUBLE + r"attn\.to_out\.0$", "double_blocks.{0}.img_attn.proj", None),
    (_DOUBLE + r"attn\.to_add_out$", "double_blocks.{0}.txt_attn.proj", None),
    (_DOUBLE + r"ff\.net\.0\.proj$", "double_blocks.{0}.img_mlp.0", None),
    (_DOUBLE + r"ff\.net\.2$", "double_blocks.{0}.img_mlp.2", None),
    (_DOUBLE + r"ff_context\.net\.0\.proj$", "double_blocks.{0}.txt_mlp.0", None),
    (_DOUBLE + r"ff_context\.net\.2$", "double_blocks.{0}.txt_mlp.2", None),
    (_DOUBLE + r"norm1\.linear$", "double_blocks.{0}.img_mod.lin", None),
    (_DOUBLE + r"norm1_context\.linear$", "double_blocks.{0}.txt_mod.lin", None),
    (_SINGLE + r"attn\.to_([qkv])$", "single_blocks.{0}.linear1", "{1}"),
    (_SINGLE + r"proj_mlp$", "single_blocks.{0}.linear1", "mlp"),
    (_SINGLE + r"proj_out$", "single_blocks.{0}.linear2", None),
    (_SINGLE + r"norm\.linear$", "single_blocks.{0}.modulation.lin", None),
    (r"x_embedder$", "img_in", None),
    (r"context_embedder$", "txt_in", None),
    (r"time_text_embed\.timestep_embedder\.linear_1$", "time_in.in_layer", None),
    (r"time_text_embed\.timestep_embedder\.linear_2$", "time_in.out_layer", None),
    (r"time_text_embed\.guidance_embedder\.linear_1$", "guidance_in.in_layer", None),
    (r"time_text_embed\.guidance_embedder\.linear_2$", "guidance_in.out_layer", None),
    (r"time_text_embed\.text_embedder\.linear_1$", "vector_in.in_layer", None),
    (r"time_text_embed\.text_embedder\.linear_2$", "vector_in.out_layer", None),
    (r"proj_out$", "final_layer.linear", None),
    (r"norm_out\.linear$", "final_layer.adaLN_modulation.1", None),
]
# The BFL final modulation is (shift, scale); diffusers' norm_out is (scale, shift).
_SWAPPED = {"final_layer.adaLN_modulation.1"}
# diffusers' kohya reader ignores the alpha of these: their scale goes into the up matrix.
_SCALE_IN_WEIGHTS = ("final_layer.",)


def bfl_module(module: str) -> tuple[str, str | None]:
    """(BFL module, slot) of a diffusers Flux transformer module; the slot names the part
    of a fused Linear (q, k, v, mlp) or is None."""
    for pattern, target, slot in _MAPPING:
        match = re.match(pattern, module)
        if match:
            groups = match.groups()
            return target.format(*groups), slot.format(*groups) if slot else None
    raise ConfigError(
        f"{module}: no counterpart in the kohya / ComfyUI Flux layout; train on Linear "
        "layers of the transformer blocks (e.g. to_q, to_k, to_v, to_out.0) to export it."
    )


def fused_slots(target: str, inner_dim: int, mlp_dim: int) -> list[tuple[str, int]]:
    """The parts of a fused BFL Linear, in row order, with their sizes."""
    if target.endswith("attn.qkv"):
        return [("q", inner_dim), ("k", inner_dim), ("v", inner_dim)]
    return [("q", inner_dim), ("k", inner_dim), ("v", inner_dim), ("mlp", mlp_dim)]


def kohya_key(target: str) -> str:
    return "lora_unet_" + target.replace(".", "_")


def to_kohya(
    state: dict[str, torch.Tensor], scales: dict[str, float], inner_dim: int, mlp_dim: int
) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT Flux LoRA state dict (`MODULE.lora_A.weight`, `MODULE.lora_B.weight`,
    optionally prefixed `transformer.`) in the kohya layout; `scales` gives each module's
    LoRA scale (alpha / r). Tensors keep their dtype; alphas are float32 scalars."""
    import torch

    factors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if not match:
            raise ConfigError(f"{key}: not a LoRA factor (lora_A / lora_B); cannot export")
        factors[match[1]][match[2]] = tensor
    targets: dict[str, dict[str | None, str]] = defaultdict(dict)
    for module in sorted(factors):
        target, slot = bfl_module(module)
        targets[target][slot] = module
    out: dict[str, torch.Tensor] = {}
    for target, members in targets.items():
        key = kohya_key(target)
        if None in members:
            module = members[None]
            down, up = factors[module]["A"], factors[module]["B"]
            if target in _SWAPPED:
                shift, scale = up.chunk(2, dim=0)
                up = torch.cat([scale, shift], dim=0)  # back to BFL's (shift, scale)
            scale_of = scales[module]
        else:
            parts = [(slot, size, members.get(slot)) for slot, size in fused_slots(
                target, inner_dim, mlp_dim)]  # fmt: skip
            present = [module for _, _, module in parts if module]
            scale_of = scales[present[0]]
            if any(scales[m] != scale_of for m in present):
                raise ConfigError(
                    f"{target}: its parts {present} have different LoRA scales; the kohya "
                    "layout has one alpha per fused Linear."
                )
            down = torch.cat([factors[m]["A"] for m in present], dim=0)
            up = down.new_zeros(sum(size for _, size, _ in parts), down.shape[0])
            row = column = 0
            for _, size, module in parts:
                if module:
                    block = factors[module]["B"]
                    up[row : row + size, column : column + block.shape[1]] = block
                    column += block.shape[1]
                row += size
        if target.startswith(_SCALE_IN_WEIGHTS) and scale_of != 1:
            up, scale_of = up * scale_of, 1.0
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = torch.tensor(scale_of * down.shape[0], dtype=torch.float32)
    return out


def kohya_path(diffusers_file: str | os.PathLike) -> Path:
    """Where the kohya copy of a LoRA file goes: NAME.safetensors -> NAME.kohya.safetensors."""
    path = Path(diffusers_file)
    return path.with_name(path.name.removesuffix(".safetensors") + ".kohya.safetensors")


def lora_scales(settings: dict, factors: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Each module's LoRA scale as diffusers applies it: alpha / r (over sqrt(r) with
    rsLoRA), with peft's rank and alpha patterns; without settings, alpha = rank (1.0)."""
    scales = {}
    for module, pair in factors.items():
        rank = pair["A"].shape[0]
        alpha = settings.get("lora_alpha", rank)
        for pattern, value in (settings.get("alpha_pattern") or {}).items():
            if re.search(rf"(^|\.){pattern}$", module):
                alpha = value
        scales[module] = alpha / (rank**0.5 if settings.get("use_rslora") else rank)
    return scales


def infer_dims(factors: dict[str, dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(inner, MLP) widths of the transformer from the LoRA's own shapes: any attention
    projection or block input gives the inner width; the MLP is 4x wider in Flux.1."""
    for module, pair in factors.items():
        target, slot = bfl_module(module)
        if slot in ("q", "k", "v"):
            inner = pair["B"].shape[0]
        elif slot == "mlp":
            inner = pair["B"].shape[0] // 4
        elif target.endswith(("attn.proj", "mlp.0", "mod.lin")):
            inner = pair["A"].shape[1]
        else:
            continue
        return inner, 4 * inner
    return 0, 0  # no fused or block module: the widths are never needed


def read_diffusers_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """A diffusers Flux LoRA file's tensors and its transformer adapter settings (the peft
    config diffusers saves in the file's metadata; empty when there is none)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata() or {}
    saved = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    settings = {k.removeprefix("transformer."): v for k, v in saved.items()}
    return state, settings


def export_kohya(diffusers_file: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write the kohya / ComfyUI copy of a diffusers Flux LoRA file (by default beside it,
    see kohya_path); a LoKr or DoRA adapter has no such layout and is refused by name."""
    from safetensors.torch import save_file

    from blkassist.fsutil import atomic_path

    path = Path(path) if path else kohya_path(diffusers_file)
    state, settings = read_diffusers_lora(diffusers_file)
    if settings.get("peft_type", "LORA") != "LORA" or settings.get("use_dora"):
        kind = "DoRA" if settings.get("use_dora") else settings["peft_type"]
        raise ConfigError(
            f"{diffusers_file}: a {kind} adapter has no kohya LoRA layout; only LoRA "
            "adapters (recipe adapter: lora) are exported for ComfyUI / kohya."
        )
    factors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in state.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key.removeprefix("transformer."))
        if match:
            factors[match[1]][match[2]] = tensor
    kohya = to_kohya(state, lora_scales(settings, factors), *infer_dims(factors))
    metadata = {
        "ss_network_module": "networks.lora_flux",
        "ss_base_model_version": "flux1",
        "blkassist_source": f"exact copy of the diffusers LoRA {Path(diffusers_file).name}",
    }
    if "r" in settings:
        metadata |= {"ss_network_dim": str(settings["r"]),
                     "ss_network_alpha": str(settings["lora_alpha"])}  # fmt: skip
    with atomic_path(path) as tmp:
        save_file(kohya, str(tmp), metadata=metadata)
    return path
