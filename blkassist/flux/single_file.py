"""Flux from the single files ComfyUI users have: a BFL-layout transformer
(`flux1-dev.safetensors`, bf16, fp8 or ComfyUI's scaled fp8), `ae.safetensors`,
`clip_l.safetensors` and `t5xxl_*.safetensors`, with the configs shipped in
`resources/flux/FLUX.1-dev/` (nothing fetched) and the tokenizers from a local folder.

A model setting names them in one of two ways:
- a manifest (`kind: single_file`, .yaml) listing the files, or a ComfyUI folder
  (`comfyui:`) to find them in, and optionally `tokenizers:` and `config:`;
- a ComfyUI folder itself (its root or its `models/`): the files are found by their usual
  names (`unet/` or `diffusion_models/flux1-dev*.safetensors`, `vae/ae.safetensors`,
  `clip/` or `text_encoders/clip_l.safetensors` and `t5xxl_*.safetensors`) and the
  tokenizers in ComfyUI's own `comfy/sd1_tokenizer` and `comfy/text_encoders/t5_tokenizer`.

The VAE loads through diffusers' `AutoencoderKL.from_single_file`, the text encoders through
transformers' `from_pretrained` with the file's state dict, the transformer through
diffusers' `FluxTransformer2DModel.from_single_file` after a key conversion written here:
diffusers' own Flux converter fixes the width at 3072, so it loads no other width (the tests'
tiny model); `bfl_to_diffusers` is checked against it on the FLUX.1-dev layout.

`check_single_file` reads only the files' headers: a missing, truncated or wrong file (an
SD VAE, a schnell transformer, a T5 of another size) is named with the fix before any job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.kohya import bfl_module, fused_slots

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# FLUX.1-dev's configs (diffusers layout, weights left out), shipped with the workflow.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "resources" / "flux" / "FLUX.1-dev"
CONFIG_FILES = {
    "transformer": "transformer/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
FILES = ("transformer", "vae", "text_encoder", "text_encoder_2")
_WHAT = {
    "transformer": "the Flux transformer (flux1-dev.safetensors)",
    "vae": "the Flux autoencoder (ae.safetensors)",
    "text_encoder": "the CLIP-L text encoder (clip_l.safetensors)",
    "text_encoder_2": "the T5-XXL text encoder (t5xxl_fp16.safetensors)",
}
_CHECKPOINT_PREFIX = "model.diffusion_model."  # Comfy's full checkpoints name it so
_SCALED_FP8 = "scaled_fp8"  # ComfyUI's scaled fp8: weight * X.scale_weight
_FINGERPRINT_CHUNK = 1 << 20
FIX = (
    "Fix: give the model setting a ComfyUI folder that has these files, or a manifest "
    "(kind: single_file) naming them; see docs/production.md, 'Flux from ComfyUI's files'."
)


@dataclass(frozen=True)
class SingleFileLayout:
    transformer: Path | None
    vae: Path | None
    text_encoder: Path | None
    text_encoder_2: Path | None
    tokenizers: Path | None
    config: Path
    source: str  # the model setting it came from


# -- the BFL key layout of the transformer ----------------------------------------------
_NORMS = [  # RMSNorm scales of q and k (not Linear layers)
    (r"transformer_blocks\.(\d+)\.attn\.norm_(added_)?([qk])\.weight", "double_blocks.{0}.{1}"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_([qk])\.weight", "single_blocks.{0}.{1}"),
]
_NORM_NAMES = {"q": "query_norm.scale", "k": "key_norm.scale"}
_SWAPPED = "final_layer.adaLN_modulation.1."  # BFL (shift, scale), diffusers (scale, shift)


def bfl_param(name: str) -> tuple[str, str | None]:
    """(BFL parameter, slot of a fused Linear or None) of a diffusers transformer parameter."""
    for pattern, target in _NORMS:
        match = re.fullmatch(pattern, name)
        if match:
            block, *stream, qk = match.groups()
            where = ("txt_attn.norm" if stream[0] else "img_attn.norm") if stream else "norm"
            return target.format(block, f"{where}.{_NORM_NAMES[qk]}"), None
    module, kind = name.rsplit(".", 1)
    target, slot = bfl_module(module)
    return f"{target}.{kind}", slot


def _slot_rows(target: str, slot: str, widths: tuple[int, int]) -> slice:
    start = 0
    for name, size in fused_slots(target, *widths):
        if name == slot:
            return slice(start, start + size)
        start += size
    raise AssertionError(f"{target} has no slot {slot}")


def _widths(config) -> tuple[int, int]:
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    return inner, int(inner * 4.0)


def diffusers_to_bfl(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers Flux transformer state dict in the BFL layout (fused q/k/v, the final
    modulation's halves swapped back)."""
    import torch

    widths = _widths(config)
    parts: dict[str, dict[str | None, torch.Tensor]] = {}
    for name, tensor in state.items():
        target, slot = bfl_param(name)
        parts.setdefault(target, {})[slot] = tensor
    out = {}
    for target, pieces in parts.items():
        if None in pieces:
            tensor = pieces[None]
            if target.startswith(_SWAPPED):
                scale, shift = tensor.chunk(2, dim=0)
                tensor = torch.cat([shift, scale], dim=0)
            out[target] = tensor
        else:
            module = target.rsplit(".", 1)[0]
            out[target] = torch.cat([pieces[s] for s, _ in fused_slots(module, *widths)])
    return out


def bfl_to_diffusers(
    checkpoint: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], config
) -> dict[str, torch.Tensor]:
    """The BFL checkpoint in diffusers' names, for the parameters `expected` (name ->
    shape); the inverse of diffusers_to_bfl."""
    import torch

    widths = _widths(config)
    out = {}
    for name in expected:
        target, slot = bfl_param(name)
        tensor = checkpoint[target]
        if slot is not None:
            tensor = tensor[_slot_rows(target.rsplit(".", 1)[0], slot, widths)]
        elif target.startswith(_SWAPPED):
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        out[name] = tensor
    return out


def expected_bfl_shapes(config) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple]]:
    """(BFL key -> shape, diffusers key -> shape) of the transformer `config` describes,
    from a model built on the meta device (no memory)."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    diffusers = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    widths = _widths(config)
    bfl: dict[str, tuple[int, ...]] = {}
    for name, shape in diffusers.items():
        target, slot = bfl_param(name)
        if slot is not None:  # the fused Linear holds every slot's rows
            rows = sum(size for _, size in fused_slots(target.rsplit(".", 1)[0], *widths))
            shape = (rows, *shape[1:])
        bfl[target] = shape
    return bfl, diffusers


def transformer_landmarks(config) -> dict[str, tuple[int, ...]]:
    """Shapes of the BFL keys that tell a Flux transformer's kind and size, from its config
    alone (no torch, so the workflow can check at parse time): input and output layers,
    the first and last block of each kind, the guidance embedder of FLUX.1-dev."""
    inner, mlp = _widths(config)
    patch = config.get("patch_size", 1)
    out_channels = config.get("out_channels") or config["in_channels"]
    doubles, singles = config["num_layers"], config["num_single_layers"]
    keys = {
        "img_in.weight": (inner, config["in_channels"]),
        "txt_in.weight": (inner, config["joint_attention_dim"]),
        "time_in.in_layer.weight": (inner, 256),
        "vector_in.in_layer.weight": (inner, config["pooled_projection_dim"]),
        "final_layer.linear.weight": (patch * patch * out_channels, inner),
    }
    if config.get("guidance_embeds"):
        keys["guidance_in.in_layer.weight"] = (inner, 256)
    for block in {0, doubles - 1}:
        keys[f"double_blocks.{block}.img_attn.qkv.weight"] = (3 * inner, inner)
        keys[f"double_blocks.{block}.txt_mlp.0.weight"] = (mlp, inner)
    for block in {0, singles - 1}:
        keys[f"single_blocks.{block}.linear1.weight"] = (3 * inner + mlp, inner)
        keys[f"single_blocks.{block}.linear2.weight"] = (inner, inner + mlp)
    return keys


def dequantize(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip Comfy's checkpoint prefix; undo ComfyUI's scaled fp8 (weight x scale_weight)."""
    state = {k.removeprefix(_CHECKPOINT_PREFIX): v for k, v in checkpoint.items()}
    if _SCALED_FP8 not in state:
        return state
    out = {}
    for key, tensor in state.items():
        if key == _SCALED_FP8 or key.endswith((".scale_weight", ".scale_input")):
            continue
        scale = state.get(key.removesuffix(".weight") + ".scale_weight")
        out[key] = tensor.float() * scale.float() if scale is not None else tensor
    return out


# -- finding the files -------------------------------------------------------------------
def _first(folders: list[Path], names: list[str], pattern: str | None = None) -> Path | None:
    """The first of `names` in `folders`; else the only file matching `pattern`."""
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    if pattern:
        found = sorted({p for f in folders if f.is_dir() for p in f.glob(pattern)})
        if len(found) > 1:
            raise ModelFileError(
                f"{len(found)} candidates for {pattern}: {', '.join(map(str, found))}. Fix: "
                "name the one to use in a manifest (kind: single_file)."
            )
        return found[0] if found else None
    return None


def _comfy_models(root: Path) -> Path:
    return root / "models" if (root / "models").is_dir() else root


def discover(root: Path) -> dict[str, Path | None]:
    """The files of a ComfyUI folder (its root or its models/ folder), by their usual names."""
    models = _comfy_models(root)
    unet = [models, models / "unet", models / "diffusion_models"]
    clip = [models, models / "clip", models / "text_encoders"]
    comfy = [root / "comfy", models.parent / "comfy"]
    tokenizers = next((c for c in [root, *comfy] if _tokenizer_dirs(c)), None)
    return {
        "transformer": _first(unet, ["flux1-dev.safetensors"], "flux1-dev*.safetensors"),
        "vae": _first([models, models / "vae"], ["ae.safetensors"]),
        "text_encoder": _first(clip, ["clip_l.safetensors"]),
        "text_encoder_2": _first(clip, ["t5xxl_fp16.safetensors"], "t5xxl*.safetensors"),
        "tokenizers": tokenizers,
    }


def _tokenizer_dirs(folder: Path) -> tuple[Path, Path] | None:
    """(CLIP, T5) tokenizer folders in a diffusers layout (tokenizer/, tokenizer_2/) or in
    ComfyUI's source tree (sd1_tokenizer/, text_encoders/t5_tokenizer/)."""
    for clip, t5 in (("tokenizer", "tokenizer_2"), ("sd1_tokenizer", "text_encoders/t5_tokenizer")):
        clip_dir, t5_dir = folder / clip, folder / t5
        clip_ok = (clip_dir / "tokenizer.json").is_file() or (clip_dir / "vocab.json").is_file()
        t5_ok = (t5_dir / "tokenizer.json").is_file() or (t5_dir / "spiece.model").is_file()
        if clip_ok and t5_ok:
            return clip_dir, t5_dir
    return None


def is_single_file_model(path: str | os.PathLike) -> bool:
    """A manifest (kind: single_file), or a folder with ComfyUI's files rather than a
    diffusers pipeline (no model_index.json, no transformer/ folder)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            return False
        return (yaml.safe_load(path.read_text()) or {}).get("kind") == "single_file"
    if not path.is_dir() or (path / "model_index.json").exists() or (path / "transformer").exists():
        return False
    models = _comfy_models(path)
    hints = ("unet", "diffusion_models", "vae", "clip", "text_encoders")
    return any((models / h).is_dir() for h in hints) or any(models.glob("*.safetensors"))


def resolve_layout(path: str | os.PathLike) -> SingleFileLayout:
    """The files a manifest or a ComfyUI folder names (not yet checked)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        found = discover(path)
        return SingleFileLayout(**found, config=DEFAULT_CONFIG, source=str(path))
    manifest = yaml.safe_load(path.read_text()) or {}
    known = {"kind", "comfyui", "tokenizers", "config", *FILES}
    unknown = sorted(set(manifest) - known)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")

    def local(value) -> Path | None:
        return None if value is None else (path.parent / Path(value).expanduser())

    found = discover(local(manifest["comfyui"])) if manifest.get("comfyui") else {}
    named = {k: local(manifest.get(k)) or found.get(k) for k in (*FILES, "tokenizers")}
    config = local(manifest.get("config")) or DEFAULT_CONFIG
    return SingleFileLayout(**named, config=config, source=str(path))


# -- checking them (headers only) --------------------------------------------------------
def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) from a .safetensors header, without reading tensors."""
    from safetensors import safe_open

    if path.stat().st_size < 1024 and path.read_bytes().startswith(b"version https://git-lfs"):
        raise ValueError("a git-lfs pointer, not the weights (run `git lfs pull`)")
    out = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            piece = handle.get_slice(key)
            out[key] = (tuple(piece.get_shape()), piece.get_dtype())
    return out


def _compare(header: dict, expected: dict[str, tuple[int, ...]]) -> list[str]:
    blocks = {
        kind: 1
        + max((int(k.split(".")[1]) for k in header if k.startswith(f"{kind}.")), default=-1)
        for kind in ("double_blocks", "single_blocks")
    }
    wanted = {
        kind: 1
        + max((int(k.split(".")[1]) for k in expected if k.startswith(f"{kind}.")), default=-1)
        for kind in blocks
    }
    extra = [f"{blocks[k]} {k} (expected {wanted[k]})" for k in blocks if blocks[k] > wanted[k]]
    missing = sorted(set(expected) - set(header))
    wrong = sorted(
        f"{k} {header[k][0]} (expected {expected[k]})"
        for k in set(expected) & set(header)
        if tuple(header[k][0]) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {', '.join(wrong[:3])}")
    if extra:
        problems.append(f"more blocks than the config: {', '.join(extra)}")
    return problems


def _read_config(layout: SingleFileLayout, part: str) -> dict:
    import json

    return json.loads((layout.config / CONFIG_FILES[part]).read_text())


def _expected_keys(layout: SingleFileLayout, part: str) -> dict[str, tuple[int, ...]]:
    """Landmark keys and shapes of each file, from its config."""
    config = _read_config(layout, part)
    if part == "transformer":
        return transformer_landmarks(config)
    if part == "vae":
        first, latent = config["block_out_channels"][0], config["latent_channels"]
        return {
            "encoder.conv_in.weight": (first, config["in_channels"], 3, 3),
            "encoder.conv_out.weight": (2 * latent, config["block_out_channels"][-1], 3, 3),
            "decoder.conv_in.weight": (config["block_out_channels"][-1], latent, 3, 3),
            "decoder.conv_out.weight": (config["out_channels"], first, 3, 3),
        }
    if part == "text_encoder":
        size = (config["vocab_size"], config["hidden_size"])
        return {"text_model.embeddings.token_embedding.weight": size}
    inner = config["num_heads"] * config["d_kv"]
    return {
        "shared.weight": (config["vocab_size"], config["d_model"]),
        "encoder.block.0.layer.0.SelfAttention.q.weight": (inner, config["d_model"]),
        f"encoder.block.{config['num_layers'] - 1}.layer.1.DenseReluDense.wo.weight": (
            config["d_model"],
            config["d_ff"],
        ),
    }


def check_single_file(layout: SingleFileLayout) -> SingleFileLayout:
    """Raise ModelFileError naming every missing or wrong file, from headers alone."""
    problems = []
    missing_configs = [f for f in CONFIG_FILES.values() if not (layout.config / f).is_file()]
    if missing_configs:
        problems.append(
            f"config folder {layout.config} lacks {', '.join(missing_configs)} (the workflow "
            "ships FLUX.1-dev's in resources/flux/FLUX.1-dev; a manifest's `config:` names "
            "another)"
        )
    for part in FILES:
        path = getattr(layout, part)
        if path is None:
            problems.append(f"{_WHAT[part]} was not found")
            continue
        if not path.is_file():
            problems.append(f"{_WHAT[part]}: {path} does not exist")
            continue
        try:
            header = _header(path)
        except Exception as error:  # any unreadable file gets the same advice
            problems.append(f"{_WHAT[part]}: {path} is not a readable .safetensors ({error})")
            continue
        if part == "transformer":
            header = {k.removeprefix(_CHECKPOINT_PREFIX): v for k, v in header.items()}
        if missing_configs:
            continue
        found = _compare(header, _expected_keys(layout, part))
        if found:
            problems.append(
                f"{_WHAT[part]}: {path} does not fit {layout.config / CONFIG_FILES[part]}: "
                + "; ".join(found)
            )
    if layout.tokenizers is None or not _tokenizer_dirs(layout.tokenizers):
        where = layout.tokenizers or "nowhere"
        problems.append(
            f"the tokenizers were not found ({where}): name a folder holding tokenizer/ and "
            "tokenizer_2/ (from a diffusers FLUX.1-dev download) or ComfyUI's comfy/ folder "
            "(sd1_tokenizer/, text_encoders/t5_tokenizer/) as `tokenizers:` in a manifest"
        )
    if problems:
        raise ModelFileError(
            f"{layout.source}: the Flux single files are incomplete: {'; '.join(problems)}. {FIX}"
        )
    return layout


def check_flux_model(path: str | os.PathLike) -> None:
    """The preflight of any Flux model setting (random spec, diffusers folder, single
    files): cheap, reads no weights; raises with the fix."""
    from blkassist.demo import read_spec
    from blkassist.flux.folder import check_flux_folder

    if is_single_file_model(path):
        check_single_file(resolve_layout(path))
    elif Path(path).suffix in (".yaml", ".yml"):
        read_spec(path)
    else:
        check_flux_folder(path)


# -- loading -----------------------------------------------------------------------------
def fingerprint_file(path: Path) -> str:
    """Name, size, and the first and last MiB: enough to tell weight files apart cheaply."""
    digest = hashlib.sha256(f"{path.name}\0{path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_CHUNK))
        if path.stat().st_size > 2 * _FINGERPRINT_CHUNK:
            handle.seek(-_FINGERPRINT_CHUNK, os.SEEK_END)
        digest.update(handle.read())
    return digest.hexdigest()[:16]


def _load_transformer(layout: SingleFileLayout, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    config = _read_config(layout, "transformer")
    _, expected = expected_bfl_shapes(config)
    checkpoint = dequantize(load_file(str(layout.transformer)))
    state = bfl_to_diffusers(checkpoint, expected, config)
    return FluxTransformer2DModel.from_single_file(
        state,
        config=str(layout.config),
        subfolder="transformer",
        torch_dtype=dtype,
        local_files_only=True,
    )


def _load_text_encoder(layout: SingleFileLayout, part: str, dtype: torch.dtype):
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model_class, config_class = (
        (CLIPTextModel, CLIPTextConfig) if part == "text_encoder" else (T5EncoderModel, T5Config)
    )
    config = config_class.from_pretrained(layout.config / Path(CONFIG_FILES[part]).parent)
    state = load_file(str(getattr(layout, part)))
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype)


def load_single_file(path: str | os.PathLike, dtype: torch.dtype) -> tuple[dict, dict, str]:
    """(parts, identity, source) of load_flux for a manifest or a ComfyUI folder."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTokenizer, T5TokenizerFast

    layout = check_single_file(resolve_layout(path))
    clip_dir, t5_dir = _tokenizer_dirs(layout.tokenizers)
    try:
        parts = {
            "transformer": _load_transformer(layout, dtype),
            "vae": AutoencoderKL.from_single_file(
                str(layout.vae), config=str(layout.config), subfolder="vae",
                torch_dtype=dtype, local_files_only=True,
            ),
            "text_encoder": _load_text_encoder(layout, "text_encoder", dtype),
            "text_encoder_2": _load_text_encoder(layout, "text_encoder_2", dtype),
            "tokenizer": CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True),
            "tokenizer_2": T5TokenizerFast.from_pretrained(t5_dir, local_files_only=True),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                layout.config, subfolder="scheduler", local_files_only=True
            ),
        }  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelFileError(
            f"{layout.source}: the Flux single files passed their checks but do not load "
            f"({error}). {FIX}"
        ) from None
    identity = {part: fingerprint_file(getattr(layout, part)) for part in FILES}
    for part, folder in (("tokenizer", clip_dir), ("tokenizer_2", t5_dir)):
        prints = [fingerprint_file(f) for f in sorted(folder.iterdir()) if f.is_file()]
        identity[part] = hashlib.sha256("".join(prints).encode()).hexdigest()[:16]
    identity["scheduler"] = fingerprint_file(layout.config / CONFIG_FILES["scheduler"])
    files = ", ".join(f"{part} {getattr(layout, part)}" for part in FILES)
    log.info("Flux single files: %s; tokenizers %s; configs %s", files, layout.tokenizers,
             layout.config)  # fmt: skip
    return parts, identity, f"single files from {layout.source}"
