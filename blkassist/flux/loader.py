"""The one loader for all Flux work: training, sampling, concept generation, GPU checks.

Production loads a local Flux.1-dev diffusers folder, or ComfyUI's single files
(blkassist.flux.single_file), never the network. Demos and tests
build a random model of the same classes from a spec file (the workflow's
`resources/flux/tiny.yaml`, whose path comes from config; blkassist.demo.random_flux),
which can be saved as a diffusers folder, so the production path is exercised offline too.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blkassist.errors import ModelFileError
from blkassist.flux.folder import PARTS, WEIGHT_STEMS, check_flux_folder, describe, download_fix
from blkassist.flux.single_file import is_single_file_model, load_single_file

log = logging.getLogger(__name__)
# peft imports bitsandbytes when it is installed; its CPU backend then warns about an
# optional 4-bit kernel package that nothing here uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_FINGERPRINT_CHUNK = 1 << 20


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where it is fast and safe (CUDA), fp32 elsewhere (CPU bf16 is slow)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's weights and buffers as stored (8-bit weights count as 8-bit)."""
    seen, total = set(), 0
    for tensor in module.state_dict().values():
        key = (tensor.device, tensor.data_ptr(), tensor.nbytes)
        if key not in seen:  # tied weights (T5's embeddings) count once
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class FluxComponents:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    tokenizer: object
    tokenizer_2: object
    scheduler: object
    identity: dict[str, str]  # per part and "model": what cache keys and provenance name
    source: str
    device: torch.device  # the job's device
    dtype: torch.dtype
    quantized: bool = False  # the transformer's weights are (or will be, once placed) 8-bit
    quantize_pending: bool = False  # quantise the transformer as it moves to the device
    placed: set[str] = field(default_factory=set)  # parts on `device` for the job

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to_device(self, *parts: str) -> None:
        """Move `parts` to the job's device, in the order given (each once). The
        transformer is quantised block by block as it moves when 8-bit was asked for: the
        device then never holds more than one full-precision block of it."""
        for part in parts:
            if part in self.placed:
                continue
            module = getattr(self, part)
            if module is None:
                raise RuntimeError(f"the {part} was released; load the model again")
            started = time.perf_counter()
            if part == "transformer" and self.quantize_pending:
                _quantize_while_moving(module, self.device)
                self.quantize_pending = False
            else:
                module.to(self.device)
            self.placed.add(part)
            log.info(
                "%s on %s: %s in %.1f s", describe(part), self.device,
                human_size(module_bytes(module)), time.perf_counter() - started,
            )  # fmt: skip

    def device_bytes(self) -> int:
        """Bytes of the parts placed on the job's device."""
        return sum(module_bytes(getattr(self, part)) for part in self.placed)

    def pipeline(self, text_encoders: bool = True):
        """A FluxPipeline sharing these modules (a LoRA added to one is in the other).
        Without text encoders it takes prompt embeddings only (they may be parked)."""
        from diffusers import FluxPipeline

        parts = {part: getattr(self, part) for part in PARTS}
        if not text_encoders or self.text_encoder is None:
            parts["text_encoder"] = parts["text_encoder_2"] = None
        pipe = FluxPipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def park_text_encoders(self) -> None:
        """Move the text encoders off the GPU once their embeddings are cached (T5 is 9 GB)."""
        if self.device.type == "cuda":
            for part in ("text_encoder", "text_encoder_2"):
                if getattr(self, part) is not None:
                    getattr(self, part).to("cpu")
            torch.cuda.empty_cache()
        self.placed -= {"text_encoder", "text_encoder_2"}

    def release_text_encoders(self) -> None:
        """Drop the text encoders for good (a job that encodes one prompt): their memory
        is free before the transformer moves in, once no pipeline holds them either."""
        self.text_encoder = self.text_encoder_2 = None
        self.placed -= {"text_encoder", "text_encoder_2"}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        """What a model card or provenance sidecar records about the base model."""
        return {
            "source": self.source,
            "identity": self.identity["model"],
            "quantized": "qint8" if self.quantized else None,
            "dtype": str(self.dtype),
        }


# -- production: a local diffusers folder ------------------------------------------------
def _fingerprint(folder: Path) -> str:
    """Cheap identity of a model folder: names, sizes, and the first and last MiB of each
    file (hashing 30 GB of weights on every run would cost minutes)."""
    digest = hashlib.sha256()
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in sorted(files):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hf download's .cache bookkeeping
        size = path.stat().st_size
        digest.update(f"{rel.as_posix()}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 2 * _FINGERPRINT_CHUNK:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_FINGERPRINT_CHUNK))
                handle.seek(-_FINGERPRINT_CHUNK, os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[dict, dict[str, str]]:
    from diffusers import FluxPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    check_flux_folder(folder)
    # Their loading bars would fill every job's log with carriage returns.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipe = FluxPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelFileError(
            f"{folder}: the Flux folder is complete but does not load ({error}). "
            f"{download_fix(folder)}"
        ) from None
    parts = {part: getattr(pipe, part) for part in PARTS}
    identity = {part: _fingerprint(folder / part) for part in PARTS}
    return parts, identity


# -- the loader -------------------------------------------------------------------------
def load_flux(
    spec_or_folder: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: bool = False,
    gradient_checkpointing: bool = False,
    defer: bool = False,
) -> FluxComponents:
    """Flux components for `device`, all frozen and in eval mode.

    Every part is read into host memory first and then moved: the transformer (quantised
    block by block on the way when `quantize`: 8-bit weights, half the memory; a LoRA
    trains on top in full precision), the VAE, then the text encoders. With `defer`, all
    parts stay on the CPU and the caller moves them in the order its job needs
    (`to_device`), e.g. text encoders first, prompts encoded, encoders parked or released,
    and only then the transformer: the device never holds T5 and the transformer at once.
    """
    path = Path(spec_or_folder)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    # A meta "device" has no memory to spare: parts are built there directly.
    host = device if device.type == "meta" else torch.device("cpu")
    single_file = is_single_file_model(path)  # ComfyUI's files (blkassist.flux.single_file)
    if path.suffix in (".yaml", ".yml") and not single_file:
        from blkassist.demo import read_spec
        from blkassist.demo.random_flux import random_parts, spec_identity

        spec = read_spec(path)
        parts, identity = random_parts(spec, host, dtype), spec_identity(spec)
        source = f"random model from {path.name}"
    else:
        if single_file:
            parts, identity, source = load_single_file(path, dtype)
        else:
            parts, identity = _load_folder(path, dtype)
            source = str(path)
        if device.type == "cpu":
            for part in WEIGHT_STEMS:
                for tensor in [*parts[part].parameters(), *parts[part].buffers()]:
                    # Weights memory-mapped at odd file offsets take other SIMD paths and
                    # round differently; aligned copies make results independent of the file.
                    tensor.data = tensor.data.clone()
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[part] = parts[part].requires_grad_(False).eval()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    identity["model"] = digest.hexdigest()[:16]
    if gradient_checkpointing:
        parts["transformer"].enable_gradient_checkpointing()
    log.info("loaded Flux (%s) for %s as %s", source, device, dtype)
    components = FluxComponents(
        **parts, identity=identity, source=source, device=device, dtype=dtype,
        quantized=quantize, quantize_pending=quantize,
    )  # fmt: skip
    if not defer:
        components.to_device("transformer", "vae", "text_encoder", "text_encoder_2")
    return components


def _quantize_while_moving(transformer: torch.nn.Module, device: torch.device) -> None:
    """8-bit (quanto qint8) weights for every linear layer of `transformer`, one block at a
    time: each block moves to `device` and is quantised there at once (quantising 12 B
    weights on the CPU would take minutes), so the device holds the 8-bit blocks so far and
    at most one full-precision block."""
    from optimum.quanto import freeze, qint8
    from optimum.quanto import quantize as quanto_quantize

    paths = []
    for name, child in transformer.named_children():
        if isinstance(child, torch.nn.ModuleList):
            paths += [f"{name}.{index}" for index in range(len(child))]
        else:
            paths.append(name)
    for path in paths:
        transformer.get_submodule(path).to(device)
        # Through the parent: a top-level linear layer is replaced in place.
        quanto_quantize(transformer, weights=qint8, include=[path, f"{path}.*"])
        freeze(transformer.get_submodule(path))
    transformer.to(device)  # anything held by the transformer itself


def quantize_transformer(components: FluxComponents) -> None:
    """Store the transformer's weights as 8-bit (quanto qint8); whatever is fused into the
    weights (e.g. a layer LoRA) must be fused before. A transformer not yet on its device
    is quantised as it moves there."""
    if components.quantized:
        return
    components.quantized = True
    if "transformer" not in components.placed:
        components.quantize_pending = True
        return
    from optimum.quanto import freeze, qint8
    from optimum.quanto import quantize as quanto_quantize

    quanto_quantize(components.transformer, weights=qint8)
    freeze(components.transformer)
    log.info("Flux transformer quantised to qint8")


def human_size(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
