"""Build the ink model: a small Flux that has really learned pen and ink, trained on CPU.

No Flux.1-dev weights can be had here, and a random model's images are noise: nothing can
show or test what a LoRA, a refinement pass or a transparent VAE does to an image. This
module trains a model of Flux's own classes (FluxTransformer2DModel, a 16-channel
AutoencoderKL, the tiny CLIP and T5 encoders with their generated tokenizers) on the
demo's pen-and-ink generator, and writes it as a diffusers folder that every part of the
workflow loads like Flux.1-dev:

1. draw the training and held-out images (blkassist.demo.ink_data);
2. train the VAE on native-scale crops (L1 + image-gradient L1 + a small KL term), then set
   its shift and scaling factors from the latents' own mean and spread, as Flux's are;
3. cache every training sample's latent distribution and caption embeddings (the text
   encoders stay frozen at their seeded initialisation, as Flux's are frozen);
4. train the transformer from scratch with the project's flow-matching objective
   (blkassist.flux.objective: logit-normal noise levels shifted by token count, velocity
   target), keeping an EMA of its weights, which is what ships;
5. measure: held-out VAE reconstruction PSNR/SSIM, the ink statistics of samples against
   the held-out corpus and against the untrained model's samples; write the folder with a
   model card, sample sheets and loss curves.

Run it with `make ink-model` (`python -m blkassist.demo.ink_model`); the settings are in
resources/flux/ink-training.yaml, the architecture in resources/flux/ink.yaml.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from PIL import Image

from blkassist.demo import INK_MODEL_FORMAT, ink_data
from blkassist.fsutil import atomic_path, write_json
from blkassist.progress import ProgressSettings, TrainingProgress

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "resources/flux/ink.yaml"
TRAINING = REPO / "resources/flux/ink-training.yaml"
OUTPUT = REPO / "resources/flux/ink"


# -- settings ---------------------------------------------------------------------------
def _from_mapping(cls, values: dict):
    names = {f.name for f in fields(cls)}
    unknown, missing = set(values) - names, names - set(values)
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: unknown {sorted(unknown)}, missing {sorted(missing)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class VaeSettings:
    steps: int
    batch_size: int
    crop: int  # training crops are cut at random from the data's native crops
    lr: float
    warmup: int
    gradient_weight: float
    kl_weight: float
    seed: int


@dataclass(frozen=True)
class TransformerSettings:
    steps: int
    batch_tokens: int  # image tokens per step: batch size = batch_tokens / tokens per image
    lr: float
    warmup: int
    final_lr_fraction: float
    weight_decay: float
    ema_decay: float
    caption_dropout: float
    guidance_range: tuple[float, float]  # uniform: the model learns to ignore it
    max_sequence_length: int
    timestep_sampling: str
    logit_mean: float
    logit_std: float
    mode_scale: float
    resolution_shift: bool
    size_every: dict  # side -> draw that side every N steps (the others: the smallest side)
    seed: int


@dataclass(frozen=True)
class MeasureSettings:
    sample_prompts: tuple[str, ...]
    sample_seeds: tuple[int, ...]
    sample_sizes: tuple[int, ...]
    sample_steps: int
    sample_guidance: float
    held_out_crops: int


@dataclass(frozen=True)
class BuildSettings:
    threads: int
    data: ink_data.DataSettings
    vae: VaeSettings
    transformer: TransformerSettings
    measure: MeasureSettings

    @classmethod
    def read(cls, path: str | Path) -> BuildSettings:
        values = yaml.safe_load(Path(path).read_text())
        return cls(
            threads=values["threads"],
            data=_from_mapping(ink_data.DataSettings, values["data"]),
            vae=_from_mapping(VaeSettings, values["vae"]),
            transformer=_from_mapping(TransformerSettings, values["transformer"]),
            measure=_from_mapping(MeasureSettings, values["measure"]),
        )


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    images = (images.clamp(-1, 1) + 1) * 127.5
    return images.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _lr_lambda(warmup: int, steps: int, final: float):
    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / max(1, warmup))
        progress = min(1.0, step / max(1, steps))
        return ramp * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))

    return factor


class Progress:
    """The project's progress lines (blkassist.progress) every `every` steps, and the whole
    loss curve kept for the model card."""

    def __init__(self, what: str, total: int, every: int = 50):
        self.lines = TrainingProgress(what, total, 0, ProgressSettings(every, math.inf))
        self.started = time.perf_counter()
        self.losses: list[float] = []

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        self.lines.update(step + 1, loss, lr)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


# -- 2. the VAE -------------------------------------------------------------------------
def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def train_vae(vae, crops: np.ndarray, settings: VaeSettings) -> dict:
    """Train `vae` in place on random `settings.crop` squares of `crops` (N, S, S, 3)."""
    generator = torch.Generator().manual_seed(settings.seed)
    data = _to_tensor(crops)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(settings.warmup, settings.steps, 0.05)
    )
    progress = Progress("VAE", settings.steps)
    side = data.shape[-1]
    for step in range(settings.steps):
        index = torch.randint(0, len(data), (settings.batch_size,), generator=generator)
        y, x = torch.randint(0, side - settings.crop + 1, (2,), generator=generator).tolist()
        batch = data[index, :, y : y + settings.crop, x : x + settings.crop]
        if step % 2:
            batch = batch.flip(-1)
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        loss = (
            (decoded - batch).abs().mean()
            + settings.gradient_weight * _gradient_l1(decoded, batch)
            + settings.kl_weight * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.step(step, loss.item(), schedule.get_last_lr()[0])
    vae.eval().requires_grad_(False)
    return {"losses": progress.losses, "seconds": progress.seconds}


@torch.no_grad()
def encode_distributions(vae, pixels: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Posterior parameters (mean and log-variance, (N, 32, h, w)) of uint8 images."""
    out = []
    for start in range(0, len(pixels), batch):
        chunk = _to_tensor(pixels[start : start + batch])
        out.append(vae.encode(chunk).latent_dist.parameters.float())
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vae, pixels: np.ndarray) -> np.ndarray:
    """Encode (posterior mode) and decode uint8 images."""
    out = []
    for start in range(0, len(pixels), 16):
        chunk = _to_tensor(pixels[start : start + 16])
        out.append(_to_uint8(vae.decode(vae.encode(chunk).latent_dist.mode()).sample))
    return np.concatenate(out)


def reconstruction_quality(original: np.ndarray, decoded: np.ndarray) -> dict:
    """Mean PSNR (dB, uint8 range) and SSIM (on luma-free RGB, channel axis) over images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = [
        peak_signal_noise_ratio(a, b, data_range=255)
        for a, b in zip(original, decoded, strict=True)
    ]
    ssim = [
        structural_similarity(a, b, channel_axis=2, data_range=255)
        for a, b in zip(original, decoded, strict=True)
    ]
    return {"psnr_db": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "crops": len(psnr)}


def set_latent_scaling(vae, distributions: torch.Tensor) -> dict:
    """Flux's convention: scaled = (latent - shift) * scale has zero mean, unit variance."""
    means = distributions[:, : distributions.shape[1] // 2]
    shift = float(means.mean())
    scale = float(1 / means.std())
    vae.register_to_config(shift_factor=round(shift, 6), scaling_factor=round(scale, 6))
    return {"shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor}


# -- 4. the transformer -----------------------------------------------------------------
@dataclass
class Bucket:
    side: int
    distributions: torch.Tensor  # (N, 32, h, w)
    captions: list[str]


@torch.no_grad()
def encode_captions(components, captions: set[str], length: int) -> dict[str, tuple]:
    """Embeddings of every caption (and of the empty prompt), cut at `length` tokens as the
    trainers cut them; the truncation itself is intended, so its warnings are muted."""
    pipe = components.pipeline()
    quiet = [logging.getLogger(n) for n in ("diffusers.pipelines.flux.pipeline_flux",
                                             "transformers.tokenization_utils_base")]  # fmt: skip
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    texts = sorted(captions | {""})
    table = {}
    for start in range(0, len(texts), 32):
        batch = texts[start : start + 32]
        embeds, pooled, _ = pipe.encode_prompt(batch, prompt_2=None, max_sequence_length=length)
        for text, e, p in zip(batch, embeds, pooled, strict=True):
            table[text] = (e.clone(), p.clone())
    for logger, level in zip(quiet, levels, strict=True):
        logger.setLevel(level)
    return table


def train_transformer(
    components, buckets: list[Bucket], texts: dict, settings: TransformerSettings
) -> tuple[torch.nn.Module, dict]:
    """Train the transformer from its random initialisation; returns the EMA copy."""
    from blkassist.flux.objective import flow_matching_loss, sample_sigmas

    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    transformer = components.transformer
    transformer.train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        transformer.parameters(),
        lr=settings.lr,
        betas=(0.9, 0.99),
        weight_decay=settings.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(settings.warmup, settings.steps, settings.final_lr_fraction)
    )
    noise_levels = SimpleNamespace(
        timestep_sampling=settings.timestep_sampling,
        logit_mean=settings.logit_mean,
        logit_std=settings.logit_std,
        mode_scale=settings.mode_scale,
        resolution_shift=settings.resolution_shift,
    )
    config = components.vae.config
    scheduler_config = dict(components.scheduler.config)
    by_side = {bucket.side: bucket for bucket in buckets}
    smallest = min(by_side)
    progress = Progress("transformer", settings.steps)
    low, high = settings.guidance_range
    for step in range(settings.steps):
        side = smallest
        for candidate, every in sorted(settings.size_every.items()):
            if int(candidate) in by_side and step % int(every) == int(every) - 1:
                side = int(candidate)
        bucket = by_side[side]
        tokens = (bucket.distributions.shape[-1] // 2) * (bucket.distributions.shape[-2] // 2)
        batch = max(1, settings.batch_tokens // tokens)
        index = torch.randint(0, len(bucket.captions), (batch,), generator=generator)
        parameters = bucket.distributions[index]
        mean, logvar = parameters.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30, 20))
        latents = mean + std * torch.randn(mean.shape, generator=generator)
        latents = (latents - config.shift_factor) * config.scaling_factor
        drop = torch.rand(batch, generator=generator) < settings.caption_dropout
        chosen = [
            "" if d else bucket.captions[i] for d, i in zip(drop, index.tolist(), strict=True)
        ]
        embeds = torch.stack([texts[c][0] for c in chosen])
        pooled = torch.stack([texts[c][1] for c in chosen])
        sigmas = sample_sigmas(noise_levels, batch, tokens, scheduler_config, generator)
        noise = torch.randn(latents.shape, generator=generator)
        guidance = low + (high - low) * float(torch.rand(1, generator=generator))
        loss = flow_matching_loss(
            transformer, latents, embeds, pooled, sigmas, noise, guidance=guidance
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(settings.ema_decay, (1 + step) / (10 + step))
            for average, live in zip(ema.parameters(), transformer.parameters(), strict=True):
                average.lerp_(live, 1 - decay)
        progress.step(step, loss.item(), schedule.get_last_lr()[0])
    transformer.eval().requires_grad_(False)
    return ema, {"losses": progress.losses, "seconds": progress.seconds}


# -- 5. measuring -----------------------------------------------------------------------
@torch.no_grad()
def sample_images(components, measure: MeasureSettings, length: int) -> list[np.ndarray]:
    """Samples from the prompts x seeds x sizes of the card, as uint8 arrays."""
    from blkassist.flux.generate import render

    pipe = components.pipeline()
    images = []
    for size in measure.sample_sizes:
        for prompt in measure.sample_prompts:
            for seed in measure.sample_seeds:
                image = render(
                    pipe,
                    seed=seed,
                    width=size,
                    height=size,
                    steps=measure.sample_steps,
                    guidance=measure.sample_guidance,
                    prompt=prompt,
                    max_sequence_length=length,
                )
                images.append(np.asarray(image.convert("RGB")))
    return images


def sheet(images: list[np.ndarray], columns: int, cell: int = 128) -> Image.Image:
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, pixels in enumerate(images):
        tile = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.LANCZOS)
        canvas.paste(tile, ((i % columns) * cell, (i // columns) * cell))
    return canvas


def loss_plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.2))
    for axis, (name, losses) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        values = np.asarray(losses)
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(values, alpha=0.25, lw=0.6)
        axis.plot(np.arange(len(smooth)) + window - 1, smooth, lw=1.2)
        axis.set_title(f"{name} loss")
        axis.set_xlabel("step")
        axis.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def ink_profile(images):
    from blkassist.texture.ink import ink_stats, profile

    return profile([ink_stats(image) for image in images])


def measure_samples(samples, random_samples, held_out, measure: MeasureSettings) -> dict:
    """Ink statistics of the trained and the untrained model's samples against held-out
    samples of the same side (crops and overviews), per side and averaged."""
    from blkassist.texture.ink import distance, feature_distances

    per_side = len(samples) // len(measure.sample_sizes)
    sides = {}
    for number, side in enumerate(measure.sample_sizes):
        mine = samples[number * per_side : (number + 1) * per_side]
        theirs = random_samples[number * per_side : (number + 1) * per_side]
        corpus = ink_profile([s.pixels for s in held_out[side]])
        trained, untrained = ink_profile(mine), ink_profile(theirs)
        sides[str(side)] = {
            "corpus": corpus.as_dict(),
            "samples": trained.as_dict(),
            "untrained_samples": untrained.as_dict(),
            "distance": {
                "samples": distance(trained, corpus),
                "untrained_samples": distance(untrained, corpus),
            },
            "per_feature": {
                "samples": feature_distances(trained, corpus),
                "untrained_samples": feature_distances(untrained, corpus),
            },
        }
    mean = {
        who: float(np.mean([side["distance"][who] for side in sides.values()]))
        for who in ("samples", "untrained_samples")
    }
    return {
        "distance_to_corpus": {
            **mean,
            "units": "held-out corpus standard deviations (RMS over features; 0 = the same)",
        },
        "by_side": sides,
    }


# -- the build --------------------------------------------------------------------------
def _repo_relative(path: str | Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def build(
    out: str | Path = OUTPUT,
    architecture: str | Path = ARCHITECTURE,
    training: str | Path = TRAINING,
) -> dict:
    """Train the ink model and write it to `out` (a diffusers folder with its card)."""
    from blkassist.flux.loader import load_flux
    from blkassist.provenance import versions

    settings = BuildSettings.read(training)
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    timings = {}

    log.info("drawing %d training and %d held-out images", settings.data.images,
             settings.data.held_out)  # fmt: skip
    images = ink_data.draw_images(settings.data)
    held_out_images = ink_data.draw_images(settings.data, held_out=True)
    by_side = ink_data.samples(settings.data, images)
    held_out = ink_data.samples(settings.data, held_out_images)
    timings["data_s"] = time.perf_counter() - started
    for side, items in sorted(by_side.items()):
        crops = sum(i.kind == "crop" for i in items)
        distinct = len({i.caption for i in items})
        log.info("%d-px samples: %d (%d crops, %d overviews), %d distinct captions", side,
                 len(items), crops, len(items) - crops, distinct)  # fmt: skip

    components = load_flux(architecture, "cpu", torch.float32)
    untrained = load_flux(architecture, "cpu", torch.float32)
    native = ink_data.stack([s for s in by_side[min(by_side)] if s.kind == "crop"])
    log.info("training the VAE on %d native-scale %d-px crops", len(native), native.shape[1])
    vae_run = train_vae(components.vae, native, settings.vae)
    timings["vae_s"] = vae_run["seconds"]

    probe = [s for s in held_out[min(held_out)] if s.kind == "crop"]
    probe = ink_data.stack(probe[: settings.measure.held_out_crops])
    decoded = reconstruct(components.vae, probe)
    vae_quality = reconstruction_quality(probe, decoded)
    log.info("VAE on %d held-out crops: PSNR %.2f dB, SSIM %.3f", vae_quality["crops"],
             vae_quality["psnr_db"], vae_quality["ssim"])  # fmt: skip

    tick = time.perf_counter()
    buckets = []
    for side, items in sorted(by_side.items()):
        pixels = ink_data.stack(items)
        # Mirrored copies are encoded too: a flipped latent is not the latent of the
        # flipped image (the encoder is not exactly mirror-symmetric).
        distributions = encode_distributions(
            components.vae, np.concatenate([pixels, pixels[:, :, ::-1]])
        )
        captions = [i.caption for i in items]
        buckets.append(Bucket(side, distributions, captions + captions))
    scaling = set_latent_scaling(components.vae, buckets[0].distributions)
    length = settings.transformer.max_sequence_length
    texts = encode_captions(components, {c for b in buckets for c in b.captions}, length)
    timings["cache_s"] = time.perf_counter() - tick
    log.info("latents cached (shift %.4f, scale %.4f), %d caption embeddings",
             scaling["shift_factor"], scaling["scaling_factor"], len(texts))  # fmt: skip

    ema, transformer_run = train_transformer(components, buckets, texts, settings.transformer)
    components.transformer = ema
    timings["transformer_s"] = transformer_run["seconds"]

    tick = time.perf_counter()
    untrained.vae.register_to_config(**scaling)
    samples = sample_images(components, settings.measure, length)
    random_samples = sample_images(untrained, settings.measure, length)
    measured = measure_samples(samples, random_samples, held_out, settings.measure)
    timings["measure_s"] = time.perf_counter() - tick
    log.info("ink distance to the held-out corpus: samples %.2f, untrained model %.2f",
             measured["distance_to_corpus"]["samples"],
             measured["distance_to_corpus"]["untrained_samples"])  # fmt: skip
    timings["total_s"] = time.perf_counter() - started

    card = {
        "format": INK_MODEL_FORMAT,
        "demo": True,  # declares_demo: path auto never refines a studio's mural with it
        "what": "a small Flux (diffusers FluxPipeline layout) trained on the demo's synthetic "
        "pen-and-ink generator; demo and tests only, not an artist's model",
        "architecture": _repo_relative(architecture),
        "training_settings": _repo_relative(training),
        "parameters": {
            part: sum(p.numel() for p in getattr(components, part).parameters())
            for part in ("transformer", "vae", "text_encoder", "text_encoder_2")
        },
        "data": {
            "generator": "blkassist.demo.synth.pen_and_ink",
            "training_images": len(images),
            "held_out_images": len(held_out_images),
            "samples_by_side": {str(k): len(v) for k, v in sorted(by_side.items())},
            "distinct_captions": len(texts) - 1,
            "captioner": "built-in (blkassist.captions.embedded), on each sample's own pixels",
        },
        "vae": {
            "steps": settings.vae.steps,
            "final_loss": float(np.mean(vae_run["losses"][-50:])),
            "held_out": vae_quality,
            **scaling,
        },
        "transformer": {
            "steps": settings.transformer.steps,
            "objective": "blkassist.flux.objective.flow_matching_loss (velocity, logit-normal "
            "noise levels shifted by token count)",
            "final_loss": float(np.mean(transformer_run["losses"][-100:])),
            "weights": f"EMA (decay {settings.transformer.ema_decay})",
            "max_sequence_length": length,
        },
        "samples": {
            "prompts": list(settings.measure.sample_prompts),
            "seeds": list(settings.measure.sample_seeds),
            "sizes": list(settings.measure.sample_sizes),
            "steps": settings.measure.sample_steps,
            "guidance": settings.measure.sample_guidance,
        },
        "ink_statistics": measured,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"threads": settings.threads, "processor": platform.processor() or None,
                    "cpus": torch.get_num_threads()},
        "versions": versions(("torch", "diffusers", "transformers", "numpy")),
    }  # fmt: skip
    write_model(components, out, card, samples, random_samples, probe, decoded,
                {"VAE": vae_run["losses"], "transformer": transformer_run["losses"]},
                settings)  # fmt: skip
    log.info("ink model written to %s in %.1f min", out, timings["total_s"] / 60)
    return card


def write_model(components, out, card, samples, random_samples, probe, decoded, curves,
                settings) -> None:  # fmt: skip
    """The diffusers folder (fp16 safetensors), model_card.json, README.md and pictures."""
    columns = len(settings.measure.sample_seeds) * 2
    with atomic_path(out) as tmp:
        pipe = components.pipeline()
        pipe.to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        pipe.to(torch.float32)
        sheet(samples, columns).save(tmp / "samples.png")
        sheet(random_samples, columns).save(tmp / "untrained_samples.png")
        pairs = [img for pair in zip(probe[:8], decoded[:8], strict=True) for img in pair]
        sheet(pairs, 8).save(tmp / "vae_reconstruction.png")
        loss_plot(curves, tmp / "losses.png")
        write_json(tmp / "model_card.json", card)
        (tmp / "README.md").write_text(model_card_text(card))


def model_card_text(card: dict) -> str:
    vae, stats = card["vae"], card["ink_statistics"]["distance_to_corpus"]
    params = card["parameters"]
    return (
        f"""# The BLK-Assist ink model (demo and tests only)

{card["what"]}. Built by `make ink-model` from `{card["training_settings"]}` and
`{card["architecture"]}` in {card["timings_s"]["total_s"] / 60:.1f} minutes on
{card["machine"]["threads"]} CPU threads.

| part | parameters |
|---|---|
"""
        + "".join(f"| {part} | {count:,} |\n" for part, count in params.items())
        + f"""
- **Data**: {card["data"]["training_images"]} images drawn by `{card["data"]["generator"]}`
  (held out: {card["data"]["held_out_images"]}), samples by side {card["data"]["samples_by_side"]},
  {card["data"]["distinct_captions"]} distinct captions from the built-in captioner.
- **VAE**: {vae["steps"]} steps; held-out reconstruction PSNR {vae["held_out"]["psnr_db"]:.2f} dB,
  SSIM {vae["held_out"]["ssim"]:.3f} over {vae["held_out"]["crops"]} crops
  (`vae_reconstruction.png`: original, decoded); shift {vae["shift_factor"]},
  scale {vae["scaling_factor"]}.
- **Transformer**: {card["transformer"]["steps"]} steps of {card["transformer"]["objective"]};
  final loss {card["transformer"]["final_loss"]:.4f}; {card["transformer"]["weights"]}.
- **Samples** (`samples.png`; the untrained model at the same seeds: `untrained_samples.png`):
  ink-statistics distance to the held-out corpus {stats["samples"]:.2f}, the untrained
  model's {stats["untrained_samples"]:.2f} ({stats["units"]}).
- Loss curves: `losses.png`. Everything measured: `model_card.json`.

What it shows: the workflow's Flux code paths on a model whose images are ink, so a LoRA, a
refinement pass or a transparent VAE has a visible, measurable effect. What it cannot show:
anything about FLUX.1-dev's quality at 1024 px; that needs the real weights.
"""
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUTPUT))
    parser.add_argument("--architecture", default=str(ARCHITECTURE))
    parser.add_argument("--training", default=str(TRAINING))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("diffusers", "transformers", "PIL", "matplotlib", "pyvips"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    card = build(args.out, args.architecture, args.training)
    print(json.dumps(card["ink_statistics"]["distance_to_corpus"], indent=2))


if __name__ == "__main__":
    main()
