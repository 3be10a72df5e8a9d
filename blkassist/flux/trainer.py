"""The Flux LoRA training loop: optimiser steps of accumulated batches, checkpoints with
samples, held-out validation, export and the model card. One trainer, any recipe
(Conceptor's Prodigy, the texture LoRA's AdamW 8-bit with cosine decay, ...).

Everything that decides what happens next (adapter, EMA, optimiser, schedule, step, data
order, every random generator) is in the checkpoint, so a killed run resumes exactly.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from blkassist.errors import ConfigError
from blkassist.flux.adapter import adapter_state, add_adapter, save_adapter
from blkassist.flux.data import BucketOrder, TensorCache, TrainingData, content_key
from blkassist.flux.ema import AdapterEMA
from blkassist.flux.generate import contact_sheet, render, save_png
from blkassist.flux.kohya import kohya_path
from blkassist.flux.objective import flow_matching_loss, sample_sigmas
from blkassist.flux.optim import make_optimizer, make_schedule
from blkassist.flux.plots import plot_losses
from blkassist.fsutil import append_csv_row, atomic_path, truncate_csv_log
from blkassist.probe import sha256_file
from blkassist.progress import ProgressSettings, TrainingProgress
from blkassist.rng import load_checkpoint, rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

VALIDATION_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Batch:
    """What one forward pass trains on."""

    latents: torch.Tensor
    embeds: torch.Tensor
    pooled: torch.Tensor
    sigmas: torch.Tensor
    noise: torch.Tensor


class FluxLoraTrainer:
    def __init__(
        self,
        recipe,
        components,
        train_dir: str | Path,
        run_dir: str | Path,
        validation_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.recipe = r = recipe
        self.components = components
        self.device = components.device
        self.transformer = components.transformer
        multiple = components.vae_scale_factor * 2
        if any(side % multiple for side in r.sample_size):
            raise ConfigError(f"sample_size {r.sample_size}: sides must be multiples of {multiple}")
        if getattr(self.transformer, "peft_config", None):
            raise ValueError("the transformer already has an adapter: load the model afresh")
        cache = TensorCache(cache_dir or Path(run_dir) / "cache")
        self.data = self.make_data(train_dir, validation_dir, cache)
        self.digest = content_key(
            json.dumps(r.weights_defining(), sort_keys=True),
            components.identity["model"],
            components.quantized,
            self.data.fingerprint(),
        )[:12]
        self.run_dir = Path(run_dir) / self.digest
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(r.seed)
        # Encode captions and images first, then the transformer takes the device (8-bit
        # on the way): the device never holds T5 and the transformer at once.
        components.to_device("text_encoder", "text_encoder_2", "vae")
        self.data.prepare()
        components.park_text_encoders()
        components.to_device("transformer")
        self.params = add_adapter(self.transformer, r)
        self.names = [n for n, p in self.transformer.named_parameters() if p.requires_grad]
        self.optimizer, self.optimizer_record = make_optimizer(self.params, r, self.device)
        self.schedule = make_schedule(self.optimizer, r)
        self.ema = AdapterEMA(self.params, r.ema_decay)
        self.order = self.make_order()
        self.generator = torch.Generator("cpu").manual_seed(r.seed)
        self.caption_rng = random.Random(r.seed)
        on_gpu = components.dtype in (torch.bfloat16, torch.float16)
        self.autocast = components.dtype if on_gpu and self.device.type == "cuda" else None
        self.step = 0  # optimiser steps done
        self.transformer.train()
        self.resumed_from = self._resume()

    # -- what a run trains on (a subclass may draw differently, e.g. by curriculum) --------
    def make_data(self, train_dir, validation_dir, cache: TensorCache) -> TrainingData:
        return TrainingData(self.recipe, self.components, train_dir, validation_dir, cache)

    def make_order(self):
        """The data order: `next()` gives indices into data.images; its state is saved."""
        r = self.recipe
        return BucketOrder([i.bucket for i in self.data.images], r.batch_size, r.seed)

    @property
    def cache_stats(self):
        return self.data.stats

    # -- one optimiser step ---------------------------------------------------------------
    def draw_batch(self) -> Batch:
        """The next batch of the data order, with its caption draws, noise levels and noise."""
        images = [self.data.images[i] for i in self.order.next()]
        latents = self.data.latents(images, self.generator)
        captions = [self.data.caption(i.caption, self.caption_rng) for i in images]
        embeds, pooled = self.data.text(captions)
        b, _, h, w = latents.shape
        config = self.components.scheduler.config
        sigmas = sample_sigmas(self.recipe, b, (h // 2) * (w // 2), config, self.generator)
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
        return Batch(latents, embeds, pooled, sigmas, noise)

    def loss(self, batch: Batch) -> torch.Tensor:
        return flow_matching_loss(
            self.transformer,
            batch.latents,
            batch.embeds,
            batch.pooled,
            batch.sigmas,
            batch.noise,
            self.recipe.guidance,
            self.autocast,
        )

    def backward(self, batches: list[Batch]) -> float:
        """Accumulate the gradient of the mean loss over `batches` (equal-sized batches:
        the gradient of one batch holding them all); returns that mean loss."""
        total = 0.0
        for batch in batches:
            loss = self.loss(batch)
            (loss / len(batches)).backward()
            total += float(loss.detach())
        return total / len(batches)

    def train_step(self) -> dict[str, float]:
        r = self.recipe
        self.optimizer.zero_grad(set_to_none=True)
        # Latents and embeddings are small; each batch's graph is freed by its backward.
        batches = [self.draw_batch() for _ in range(r.gradient_accumulation)]
        row = {
            "loss": self.backward(batches),
            "sigma": float(torch.cat([b.sigmas.float().cpu() for b in batches]).mean()),
        }
        if r.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, r.max_grad_norm)
            row["grad_norm"] = float(norm)
        group = self.optimizer.param_groups[0]
        row["lr"] = float(group["lr"])
        self.optimizer.step()
        self.schedule.step()
        self.ema.step()
        self.step += 1
        if "d" in group:  # Prodigy's own step size estimate
            row["d"] = float(group["d"])
            row["step_size"] = float(group["d"] * group["lr"])
        return row

    # -- checkpoints ------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / "checkpoints").glob("step-*"))

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "adapter": {
                n: p.detach().cpu().clone() for n, p in zip(self.names, self.params, strict=True)
            },
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "order": self.order.state_dict(),
            "generator": self.generator.get_state(),
            "caption_rng": self.caption_rng.getstate(),
            "rng": rng_state(),
            "recipe": asdict(self.recipe),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, param in zip(self.names, self.params, strict=True):
                param.copy_(state["adapter"][name])
        self.ema.load_state_dict(state["ema"], self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.order.load_state_dict(state["order"])
        self.generator.set_state(state["generator"])
        self.caption_rng.setstate(state["caption_rng"])
        set_rng_state(state["rng"])
        self.step = state["step"]

    def _resume(self) -> Path | None:
        resumable = [c for c in self.checkpoints() if (c / "state.pt").is_file()]
        if not resumable:
            return None
        state = load_checkpoint(resumable[-1] / "state.pt", self.device)
        self.load_state_dict(state)
        for name in ("losses.csv", "validation.csv"):  # drop rows a killed run logged later
            truncate_csv_log(self.run_dir / name, "step", self.step)
        log.info("resumed from %s (step %d)", resumable[-1], self.step)
        return resumable[-1]

    def adapter_state(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The adapter (live or averaged) in peft's key layout."""
        if not ema:
            return adapter_state(self.transformer)
        with self.ema.applied():
            return adapter_state(self.transformer)

    def save_lora(self, path: str | Path, ema: bool = False) -> Path:
        if not ema:
            return save_adapter(self.transformer, path, self.recipe.save_dtype)
        with self.ema.applied():
            return save_adapter(self.transformer, path, self.recipe.save_dtype)

    def save_checkpoint(self) -> Path:
        r = self.recipe
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
        for old in checkpoints[: -r.keep]:
            shutil.rmtree(old)
        for old in checkpoints[-r.keep : -r.keep_resumable]:
            (old / "state.pt").unlink(missing_ok=True)
        return folder

    # -- validation and samples -------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self, images=None, ema: bool = True) -> float:
        """Mean loss at fixed noise levels and fixed noise on held-out images (or
        `images`): comparable across steps, runs and resumes; touches no training RNG."""
        images = images or self.data.held_out or self.data.images
        images = images[: self.recipe.validation_images]
        generator = torch.Generator("cpu").manual_seed(self.recipe.seed + 1)
        losses = []
        with self.ema.applied() if ema else nullcontext():
            self.transformer.eval()
            try:
                for image in images:
                    latents = self.data.latents([image])
                    embeds, pooled = self.data.text([image.caption])
                    noise = torch.randn(latents.shape, generator=generator).to(self.device)
                    for sigma in VALIDATION_SIGMAS:
                        batch = Batch(latents, embeds, pooled, torch.tensor([sigma]), noise)
                        losses.append(float(self.loss(batch)))
            finally:
                self.transformer.train()
        return float(np.mean(losses))

    @torch.no_grad()
    def write_samples(self, folder: Path) -> None:
        """Fixed prompts and seeds with the EMA adapter, and their contact sheet."""
        r = self.recipe
        prompts = self.data.sample_prompts()
        if not prompts or not r.sample_seeds:
            return
        pipe = self.components.pipeline(text_encoders=False)
        rows = []
        cuda = [self.device] if self.device.type == "cuda" else []
        with self.ema.applied(), torch.random.fork_rng(devices=cuda):
            self.transformer.eval()
            try:
                for p, prompt in enumerate(prompts):
                    embeds, pooled = self.data.text([prompt])
                    row = []
                    for seed in r.sample_seeds:
                        image, shown = self.sample_image(pipe, seed, embeds, pooled)
                        save_png(image, folder / "samples" / f"p{p}-seed{seed}.png")
                        row.append(shown)
                    rows.append(row)
            finally:
                self.transformer.train()
        save_png(contact_sheet(rows, prompts), folder / "contact_sheet.png")

    def sample_image(self, pipe, seed: int, embeds, pooled):
        """One sample (what is saved, and how the contact sheet shows it)."""
        image = self.render_sample(pipe, seed, embeds, pooled)
        return image, image

    def render_sample(self, pipe, seed: int, embeds, pooled, **options):
        """The recipe's sampler settings for one seed; `options` go to render()."""
        r = self.recipe
        return render(
            pipe,
            seed=seed,
            width=r.sample_size[0],
            height=r.sample_size[1],
            steps=r.sample_steps,
            guidance=r.sample_guidance,
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            max_sequence_length=r.max_sequence_length,
            **options,
        )

    # -- the run ---------------------------------------------------------------------
    def _validate(self) -> None:
        for weights in ("ema", "live"):
            loss = self.validation_loss(ema=weights == "ema")
            append_csv_row(
                self.run_dir / "validation.csv",
                {"step": self.step, "weights": weights, "loss": round(loss, 6)},
            )

    def run(
        self,
        stop_after: int | None = None,
        progress: ProgressSettings | None = None,
        label: str = "Flux LoRA",
    ) -> dict:
        """Train to `steps`, saving every `save_every`; `stop_after` ends this call early
        (with a checkpoint), as a time-sliced job would. `progress` logs a progress line
        at its interval."""
        r = self.recipe
        target = r.steps if stop_after is None else min(r.steps, stop_after)
        if self.step == 0 and not (self.run_dir / "validation.csv").exists():
            self._validate()  # the base model: the adapter starts as a no-op
        started, first = time.perf_counter(), self.step
        reporter = TrainingProgress(label, r.steps, self.step, progress, self.device)
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
            reporter.update(self.step, row["loss"], row.get("step_size", row["lr"]))
            if self.step % r.save_every == 0 or self.step == target:
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
        kohya = kohya_path(source)
        return {
            "step": int(checkpoints[-1].name.split("-")[1]),
            "weights": "ema" if ema else "live",
            "kohya_copy": str(kohya) if kohya.is_file() else None,
            "checkpoint": str(checkpoints[-1]),
            "file": str(path),
            "sha256": sha256_file(path),
        }

    def model_card(self, chosen: dict, result: dict, title: str | None = None) -> dict:
        r = self.recipe
        images, held_out = self.data.images, self.data.held_out
        return {
            "model": title or f"Flux.1-dev {r.adapter} on the artist's training set",
            "base": self.components.describe(),
            "recipe": asdict(r),
            "optimizer": self.optimizer_record,
            "precision": {
                "base": str(self.components.dtype),
                "autocast": str(self.autocast) if self.autocast else None,
                "adapter": "torch.float32",
                "saved_as": r.save_dtype,
            },
            "guidance": {
                "trained_with": r.guidance,
                "sampling_default": r.sample_guidance,
                "advice": "Flux.1-dev is guidance-distilled: sample at sampling_default for "
                "new prompts; trained_with reproduces the training images most closely.",
            },
            "run": {"digest": self.digest, "dir": str(self.run_dir), **result},
            "data": {
                "fingerprint": self.data.fingerprint(),
                "images": [
                    {
                        "file": str(i.path),
                        "sha256": i.sha256,
                        "caption": i.caption,
                        "bucket": list(i.bucket),
                    }
                    for i in images
                ],
                "held_out": [{"file": str(i.path), "sha256": i.sha256} for i in held_out],
            },
            "chosen": chosen,
        }
