"""LoRA (or LoKr) training of Flux.1-dev on a training set from blkassist.corpus.datasets.

Flow matching on packed latents, as Flux was trained: x_t = (1 - s) x_0 + s noise, the
transformer predicts noise - x_0, s drawn logit-normal and shifted for the image's token
count like the sampling schedule. Prodigy sets the step size itself; an EMA of the adapter
is kept and is what ships by default.

Latents and text embeddings are computed once and cached on disk by content hash, so a
rerun (or another recipe on the same data and model) skips the VAE and both text encoders,
and the encoders can leave the GPU during training. Caption shuffling therefore draws from
a fixed pool of `caption_variants` shuffles per caption.

Everything that decides what happens next (adapter, EMA, optimiser, step, data order,
every random generator) is in the checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import (
    EMAModel,
    cast_training_params,
    compute_density_for_timestep_sampling,
)
from peft import LoKrConfig, LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from prodigyopt import Prodigy

from blkassist.errors import ConfigError
from blkassist.flux.data import (
    BucketOrder,
    TensorCache,
    TrainingImage,
    caption_variants,
    content_key,
    data_fingerprint,
    read_split,
)
from blkassist.flux.generate import contact_sheet, render, save_png
from blkassist.fsutil import append_csv_row, atomic_path, truncate_csv_log, write_json
from blkassist.probe import sha256_file
from blkassist.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

VALIDATION_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class LoraSettings:
    # adapter
    adapter: str = "lora"  # "lora" or "lokr"
    rank: int = 32
    alpha: float = 32.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lokr_decompose_factor: int = -1
    # Prodigy
    lr: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.001
    decouple: bool = True
    use_bias_correction: bool = True
    safeguard_warmup: bool = True
    d0: float = 1e-5
    d_coef: float = 2.0
    # schedule and checkpoints
    steps: int = 6000
    save_every: int = 250
    keep: int = 16  # checkpoints whose LoRA files and samples are kept
    keep_resumable: int = 2  # of those, how many keep the (large) optimiser state
    ema_decay: float = 0.99
    batch_size: int = 1
    # captions
    caption_dropout: float = 0.05
    shuffle_tags: bool = True
    keep_tags: int = 1  # leading comma-separated tags that stay in place
    caption_variants: int = 8
    max_sequence_length: int = 512
    # objective
    timestep_sampling: str = "logit_normal"  # or "uniform", "mode" (diffusers' names)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    resolution_shift: bool = True  # shift sigmas with the token count, as sampling does
    guidance: float = 1.0  # Flux.1-dev's guidance embedding while training
    # model loading (see blkassist.flux.loader.load_flux)
    quantize: bool = True
    gradient_checkpointing: bool = True
    save_dtype: str = "fp16"
    seed: int = 0
    # what happens at each save
    sample_prompts: tuple[str, ...] = ()  # empty: the first captions of the held-out split
    sample_count: int = 2  # prompts taken from the data when sample_prompts is empty
    sample_seeds: tuple[int, ...] = (0, 1)
    sample_size: tuple[int, int] = (1024, 1024)
    sample_steps: int = 28
    sample_guidance: float = 3.5
    validation_images: int = 8

    # Settings that do not change the trained weights.
    _NOT_RECIPE = (
        "steps",
        "save_every",
        "keep",
        "keep_resumable",
        "gradient_checkpointing",
        "sample_prompts",
        "sample_count",
        "sample_seeds",
        "sample_size",
        "sample_steps",
        "sample_guidance",
        "validation_images",
    )

    def recipe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self._NOT_RECIPE}


def settings_from_config(config: dict, key: str = "flux") -> LoraSettings:
    """LoraSettings from a config mapping; unknown keys are named, not ignored."""
    known = {f.name: f for f in fields(LoraSettings)}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {', '.join(known)})")
    values = {}
    for name, value in config.items():
        default = getattr(LoraSettings, name, None)
        values[name] = tuple(value) if isinstance(default, tuple) else value
    settings = LoraSettings(**values)
    if settings.adapter not in ("lora", "lokr"):
        raise ConfigError(f"{key}.adapter: {settings.adapter!r} is not 'lora' or 'lokr'")
    if settings.save_dtype not in _DTYPES:
        raise ConfigError(f"{key}.save_dtype: {settings.save_dtype!r} is not one of {_DTYPES}")
    return settings


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# -- the objective -----------------------------------------------------------------------
def sample_sigmas(
    settings: LoraSettings, batch: int, tokens: int, scheduler_config, generator: torch.Generator
) -> torch.Tensor:
    """Noise levels in (0, 1): diffusers' SD3/Flux density, then Flux's token-count shift."""

    u = compute_density_for_timestep_sampling(
        settings.timestep_sampling,
        batch,
        settings.logit_mean,
        settings.logit_std,
        settings.mode_scale,
        generator=generator,
    )
    if not settings.resolution_shift:
        return u
    mu = calculate_shift(
        tokens,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


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
    """Mean squared error of the predicted velocity (noise - latents) at noise levels
    `sigmas`; latents are scaled VAE latents (B, 16, h, w), packed here as Flux packs them."""
    b, c, h, w = latents.shape
    device, dtype = latents.device, prompt_embeds.dtype
    s = sigmas.to(device, torch.float32).view(b, 1, 1, 1)
    noisy = (1 - s) * latents.float() + s * noise.float()
    packed = FluxPipeline._pack_latents(noisy.to(dtype), b, c, h, w)
    image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    extra = {}
    if transformer.config.guidance_embeds:
        extra["guidance"] = torch.full((b,), guidance, device=device, dtype=torch.float32)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        packed_prediction = transformer(
            hidden_states=packed,
            timestep=s.view(b).to(dtype),
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
            **extra,
        )[0]
    # _unpack_latents wants pixel sizes: a scale factor of 1 makes them the latent sizes.
    prediction = FluxPipeline._unpack_latents(packed_prediction, h, w, 1)
    return F.mse_loss(prediction.float(), (noise - latents).float())


def add_adapter(transformer, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Inject the trainable adapter (fp32, whatever the base's dtype) and return its
    parameters in a fixed order."""

    targets = list(settings.target_modules)
    if settings.adapter == "lokr":
        config = LoKrConfig(
            r=settings.rank,
            alpha=settings.alpha,
            target_modules=targets,
            decompose_factor=settings.lokr_decompose_factor,
        )
    else:
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            target_modules=targets,
            init_lora_weights="gaussian",
        )
    transformer.add_adapter(config)
    cast_training_params(transformer, torch.float32)
    return [p for p in transformer.parameters() if p.requires_grad]


def make_optimizer(params, settings: LoraSettings):
    return Prodigy(
        params,
        lr=settings.lr,
        betas=tuple(settings.betas),
        weight_decay=settings.weight_decay,
        decouple=settings.decouple,
        use_bias_correction=settings.use_bias_correction,
        safeguard_warmup=settings.safeguard_warmup,
        d0=settings.d0,
        d_coef=settings.d_coef,
    )


# -- the trainer -------------------------------------------------------------------------
class FluxLoraTrainer:
    def __init__(
        self,
        settings: LoraSettings,
        components,
        train_dir: str | Path,
        run_dir: str | Path,
        validation_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.settings = s = settings
        self.components = components
        self.device = components.device
        self.transformer = components.transformer
        multiple = components.vae_scale_factor * 2
        if any(side % multiple for side in s.sample_size):
            raise ConfigError(f"sample_size {s.sample_size}: sides must be multiples of {multiple}")
        if getattr(self.transformer, "peft_config", None):
            raise ValueError("the transformer already has an adapter: load the model afresh")
        self.images = read_split(train_dir, multiple)
        held_out = validation_dir and (Path(validation_dir) / "metadata.jsonl").is_file()
        self.held_out = read_split(validation_dir, multiple) if held_out else []
        self.digest = content_key(
            json.dumps(s.recipe(), sort_keys=True),
            components.identity["model"],
            components.quantized,
            data_fingerprint(self.images),
        )[:12]
        self.run_dir = Path(run_dir) / self.digest
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache = TensorCache(cache_dir or Path(run_dir) / "cache")
        self.cache_stats: Counter = Counter()
        random.seed(s.seed)
        np.random.seed(s.seed)
        torch.manual_seed(s.seed)
        self._prepare_caches()
        components.park_text_encoders()
        self.params = add_adapter(self.transformer, s)
        self.names = [n for n, p in self.transformer.named_parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, s)
        self.ema = EMAModel(self.params, decay=s.ema_decay)
        self.order = BucketOrder([i.bucket for i in self.images], s.batch_size, s.seed)
        self.generator = torch.Generator("cpu").manual_seed(s.seed)
        self.caption_rng = random.Random(s.seed)
        on_gpu = components.dtype in (torch.bfloat16, torch.float16)
        self.autocast = components.dtype if on_gpu and self.device.type == "cuda" else None
        self.step = 0
        self.transformer.train()
        self.resumed_from = self._resume()

    # -- caches ----------------------------------------------------------------------
    def _latent_key(self, image: TrainingImage) -> str:
        vae = self.components.vae
        return content_key(
            "latents", self.components.identity["vae"], vae.dtype, image.sha256, image.bucket
        )

    def _text_key(self, text: str) -> str:
        c = self.components
        parts = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        return content_key(
            "text",
            *(c.identity[part] for part in parts),
            c.text_encoder.dtype,
            self.settings.max_sequence_length,
            text,
        )

    def _variants(self, caption: str) -> list[str]:
        s = self.settings
        count = s.caption_variants if s.shuffle_tags else 1
        return caption_variants(caption, count, s.keep_tags, s.seed)

    @torch.no_grad()
    def _prepare_caches(self) -> None:
        """Encode what the cache lacks: VAE latent distributions, text embeddings."""
        c = self.components
        processor = VaeImageProcessor(vae_scale_factor=c.vae_scale_factor * 2)
        for image in self.images + self.held_out:
            key = self._latent_key(image)
            if self.cache.has("latents", key):
                self.cache_stats["latents_reused"] += 1
                continue
            with Image.open(image.path) as pil:
                pixels = processor.preprocess(pil.convert("RGB"))
            pixels = pixels.to(self.device, c.vae.dtype)
            parameters = c.vae.encode(pixels).latent_dist.parameters.float()
            self.cache.save("latents", key, {"parameters": parameters[0]})
            self.cache_stats["latents_encoded"] += 1
        texts = {""} | set(self.sample_prompts())
        for image in self.images + self.held_out:
            texts.update(self._variants(image.caption))
        missing = sorted(t for t in texts if not self.cache.has("text", self._text_key(t)))
        self.cache_stats["texts_reused"] += len(texts) - len(missing)
        pipe = c.pipeline() if missing else None
        for start in range(0, len(missing), 8):
            batch = missing[start : start + 8]
            embeds, pooled, _ = pipe.encode_prompt(
                batch, prompt_2=None, max_sequence_length=self.settings.max_sequence_length
            )
            for text, e, p in zip(batch, embeds, pooled, strict=True):
                self.cache.save(
                    "text", self._text_key(text), {"embeds": e.clone(), "pooled": p.clone()}
                )
            self.cache_stats["texts_encoded"] += len(batch)

    def sample_prompts(self) -> list[str]:
        s = self.settings
        if s.sample_prompts:
            return list(s.sample_prompts)
        prompts = []
        for image in self.held_out + self.images:
            if image.caption not in prompts:
                prompts.append(image.caption)
        return prompts[: s.sample_count]

    def _text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = [self.cache.load("text", self._text_key(t)) for t in texts]
        embeds = torch.stack([t["embeds"] for t in loaded]).to(self.device)
        pooled = torch.stack([t["pooled"] for t in loaded]).to(self.device)
        return embeds, pooled

    def _latents(self, images: list[TrainingImage], sample: bool) -> torch.Tensor:
        """Scaled latents: drawn from the cached distribution, or its mean."""
        config = self.components.vae.config
        batch = []
        for image in images:
            parameters = self.cache.load("latents", self._latent_key(image))["parameters"][None]
            dist = DiagonalGaussianDistribution(parameters)
            latent = dist.sample(self.generator) if sample else dist.mean
            batch.append((latent - config.shift_factor) * config.scaling_factor)
        return torch.cat(batch).to(self.device)

    def _caption(self, caption: str) -> str:
        if self.caption_rng.random() < self.settings.caption_dropout:
            return ""
        return self.caption_rng.choice(self._variants(caption))

    # -- checkpoints -----------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / "checkpoints").glob("step-*"))

    def state_dict(self) -> dict:
        ema = self.ema.state_dict()
        ema["shadow_params"] = [p.detach().cpu().clone() for p in ema["shadow_params"]]
        return {
            "step": self.step,
            "adapter": {
                n: p.detach().cpu().clone() for n, p in zip(self.names, self.params, strict=True)
            },
            "ema": ema,
            "optimizer": self.optimizer.state_dict(),
            "order": self.order.state_dict(),
            "generator": self.generator.get_state(),
            "caption_rng": self.caption_rng.getstate(),
            "rng": rng_state(),
            "settings": asdict(self.settings),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, param in zip(self.names, self.params, strict=True):
                param.copy_(state["adapter"][name])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.order.load_state_dict(state["order"])
        self.generator.set_state(state["generator"])
        self.caption_rng.setstate(state["caption_rng"])
        set_rng_state(state["rng"])
        self.step = state["step"]

    def _resume(self) -> Path | None:
        resumable = [c for c in self.checkpoints() if (c / "state.pt").is_file()]
        if not resumable:
            return None
        state = torch.load(resumable[-1] / "state.pt", map_location=self.device, weights_only=False)
        self.load_state_dict(state)
        for name in ("losses.csv", "validation.csv"):  # drop rows a killed run logged later
            truncate_csv_log(self.run_dir / name, "step", self.step)
        log.info("resumed from %s (step %d)", resumable[-1], self.step)
        return resumable[-1]

    def adapter_state(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The adapter in peft's key layout (what diffusers' LoRA files hold)."""
        if ema:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            return {
                k: v.detach().cpu().clone()
                for k, v in get_peft_model_state_dict(self.transformer).items()
            }
        finally:
            if ema:
                self.ema.restore(self.params)

    def save_lora(self, path: str | Path, ema: bool = False) -> Path:
        """A .safetensors that FluxPipeline.load_lora_weights (LoKr: load_lora_adapter)
        loads, in save_dtype."""
        path = Path(path)
        dtype = _DTYPES[self.settings.save_dtype]
        state = {k: v.to(dtype).contiguous() for k, v in self.adapter_state(ema).items()}
        metadata = self.transformer.peft_config["default"].to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
            FluxPipeline.save_lora_weights(
                tmp,
                transformer_lora_layers=state,
                weight_name=path.name,
                transformer_lora_adapter_metadata=metadata,
            )
            os.replace(Path(tmp) / path.name, path)
        return path

    def save_checkpoint(self) -> Path:
        s = self.settings
        folder = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            torch.save(self.state_dict(), tmp / "state.pt")
            self.save_lora(tmp / "lora.safetensors")
            self.save_lora(tmp / "lora_ema.safetensors", ema=True)
            self.write_samples(tmp)
            if folder.exists():  # saved before, e.g. by a run that was then killed
                shutil.rmtree(folder)
        checkpoints = self.checkpoints()
        for old in checkpoints[: -s.keep]:
            shutil.rmtree(old)
        for old in checkpoints[-s.keep : -s.keep_resumable]:
            (old / "state.pt").unlink(missing_ok=True)
        return folder

    # -- training --------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        s = self.settings
        images = [self.images[i] for i in self.order.next()]
        latents = self._latents(images, sample=True)
        embeds, pooled = self._text([self._caption(i.caption) for i in images])
        b, _, h, w = latents.shape
        sigmas = sample_sigmas(
            s, b, (h // 2) * (w // 2), self.components.scheduler.config, self.generator
        )
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        loss = flow_matching_loss(
            self.transformer, latents, embeds, pooled, sigmas, noise, s.guidance, self.autocast
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.step(self.params)
        self.step += 1
        group = self.optimizer.param_groups[0]
        return {
            "loss": float(loss.detach()),
            "sigma": float(sigmas.mean()),
            "d": float(group["d"]),
            "step_size": float(group["d"] * group["lr"]),
        }

    @torch.no_grad()
    def validation_loss(self, images: list[TrainingImage] | None = None, ema=True) -> float:
        """Mean loss at fixed noise levels and fixed noise on held-out images (or
        `images`): comparable across steps, runs and resumes; touches no training RNG."""
        images = images or self.held_out or self.images
        images = images[: self.settings.validation_images]
        if ema:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        self.transformer.eval()
        generator = torch.Generator("cpu").manual_seed(self.settings.seed + 1)
        losses = []
        try:
            for image in images:
                latents = self._latents([image], sample=False)
                embeds, pooled = self._text([image.caption])
                noise = torch.randn(latents.shape, generator=generator).to(self.device)
                for sigma in VALIDATION_SIGMAS:
                    loss = flow_matching_loss(
                        self.transformer,
                        latents,
                        embeds,
                        pooled,
                        torch.tensor([sigma]),
                        noise,
                        self.settings.guidance,
                        self.autocast,
                    )
                    losses.append(float(loss))
        finally:
            self.transformer.train()
            if ema:
                self.ema.restore(self.params)
        return float(np.mean(losses))

    @torch.no_grad()
    def write_samples(self, folder: Path) -> None:
        """Fixed prompts and seeds with the EMA adapter, and their contact sheet."""
        s = self.settings
        prompts = self.sample_prompts()
        if not prompts or not s.sample_seeds:
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        self.transformer.eval()
        pipe = self.components.pipeline(text_encoders=False)
        rows = []
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                for p, prompt in enumerate(prompts):
                    embeds, pooled = self._text([prompt])
                    row = []
                    for seed in s.sample_seeds:
                        image = render(
                            pipe,
                            seed=seed,
                            width=s.sample_size[0],
                            height=s.sample_size[1],
                            steps=s.sample_steps,
                            guidance=s.sample_guidance,
                            prompt_embeds=embeds,
                            pooled_prompt_embeds=pooled,
                            max_sequence_length=s.max_sequence_length,
                        )
                        save_png(image, folder / "samples" / f"p{p}-seed{seed}.png")
                        row.append(image)
                    rows.append(row)
        finally:
            self.transformer.train()
            self.ema.restore(self.params)
        save_png(contact_sheet(rows, prompts), folder / "contact_sheet.png")

    # -- the run ---------------------------------------------------------------------
    def _validate(self) -> None:
        for weights in ("ema", "live"):
            loss = self.validation_loss(ema=weights == "ema")
            append_csv_row(
                self.run_dir / "validation.csv",
                {"step": self.step, "weights": weights, "loss": round(loss, 6)},
            )

    def run(self, stop_after: int | None = None) -> dict:
        """Train to `steps`, saving every `save_every`; `stop_after` ends this call early
        (with a checkpoint), as a time-sliced job would."""
        s = self.settings
        target = s.steps if stop_after is None else min(s.steps, stop_after)
        if self.step == 0 and not (self.run_dir / "validation.csv").exists():
            self._validate()  # the base model: the adapter starts as a no-op
        started, first = time.perf_counter(), self.step
        while self.step < target:
            tick = time.perf_counter()
            row = self.train_step()
            append_csv_row(
                self.run_dir / "losses.csv",
                {
                    "step": self.step,
                    **{k: f"{v:.6g}" for k, v in row.items()},
                    "seconds": round(time.perf_counter() - tick, 4),
                },
            )
            if self.step % s.save_every == 0 or self.step == target:
                self._validate()
                self.save_checkpoint()
        plot_losses(
            self.run_dir / "losses.csv",
            self.run_dir / "validation.csv",
            self.run_dir / "losses.png",
        )
        done, seconds = self.step - first, time.perf_counter() - started
        return {
            "steps": self.step,
            "seconds_per_step": seconds / done if done else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "cache": dict(self.cache_stats),
        }

    def export(self, path: str | Path, step: int | None = None, ema: bool = True) -> dict:
        """Copy the chosen LoRA (default: the last checkpoint's EMA) to `path`."""
        checkpoints = self.checkpoints()
        if step is not None:
            checkpoints = [c for c in checkpoints if c.name == f"step-{step:08d}"]
        if not checkpoints:
            kept = ", ".join(c.name for c in self.checkpoints()) or "none"
            raise ConfigError(f"checkpoint step {step}: not kept in {self.run_dir} ({kept})")
        source = checkpoints[-1] / ("lora_ema.safetensors" if ema else "lora.safetensors")
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
        return {
            "step": int(checkpoints[-1].name.split("-")[1]),
            "weights": "ema" if ema else "live",
            "checkpoint": str(checkpoints[-1]),
            "file": str(path),
            "sha256": sha256_file(path),
        }

    def model_card(self, chosen: dict, result: dict) -> dict:
        return {
            "model": f"Flux.1-dev {self.settings.adapter} on the artist's training set",
            "base": self.components.describe(),
            "recipe": asdict(self.settings),
            "run": {"digest": self.digest, "dir": str(self.run_dir), **result},
            "data": {
                "fingerprint": data_fingerprint(self.images),
                "images": [
                    {
                        "file": str(i.path),
                        "sha256": i.sha256,
                        "caption": i.caption,
                        "bucket": list(i.bucket),
                    }
                    for i in self.images
                ],
                "held_out": [{"file": str(i.path), "sha256": i.sha256} for i in self.held_out],
            },
            "chosen": chosen,
        }


def plot_losses(loss_csv: Path, validation_csv: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    if loss_csv.exists():
        with open(loss_csv) as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(r["step"]) for r in rows]
        losses = np.array([float(r["loss"]) for r in rows])
        axis.plot(steps, losses, color="lightgrey", linewidth=0.8, label="training loss")
        if len(losses) > 1:
            smooth, value = [], losses[0]
            for loss in losses:
                value = 0.95 * value + 0.05 * loss
                smooth.append(value)
            axis.plot(steps, smooth, color="tab:blue", label="training loss (smoothed)")
    if validation_csv.exists():
        with open(validation_csv) as handle:
            rows = list(csv.DictReader(handle))
        for weights, colour in (("ema", "tab:red"), ("live", "tab:orange")):
            points = [(int(r["step"]), float(r["loss"])) for r in rows if r["weights"] == weights]
            if points:
                axis.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    color=colour,
                    label=f"held-out loss ({weights})",
                )
    axis.set_xlabel("step")
    axis.set_ylabel("flow-matching MSE")
    axis.legend()
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def train_run(
    config: dict,
    model: str,
    train_dir: str,
    run_dir: str,
    export: str,
    model_card: str,
    lock_dir: str,
    threads: int,
    validation_dir: str | None = None,
    chosen_step: int | None = None,
    key: str = "flux",
) -> dict:
    """One training job for the workflow: lease a device, load, train or resume, export
    the chosen LoRA and write the model card."""
    from blkassist.devices import lease_device
    from blkassist.flux.loader import load_flux

    settings = settings_from_config(config, key)
    torch.set_num_threads(max(1, threads))
    with lease_device(lock_dir) as lease:
        components = load_flux(
            model,
            lease.torch_device,
            quantize=settings.quantize,
            gradient_checkpointing=settings.gradient_checkpointing,
        )
        trainer = FluxLoraTrainer(settings, components, train_dir, run_dir, validation_dir)
        result = {**trainer.run(), "device": lease.torch_device}
        chosen = trainer.export(export, chosen_step)
    write_json(model_card, trainer.model_card(chosen, result))
    log.info("flux lora: %s", result)
    return result
