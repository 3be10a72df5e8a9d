"""Real-ESRGAN fine-tuning: generator from the x4plus weights, UNet discriminator with
spectral norm, L1 + VGG19 perceptual + relativistic average GAN, Adam with multi-step
decay, EMA of the generator (with warm-up), AMP on CUDA. Training pairs come from
Real-ESRGAN's degradation pipeline and, for a share of them, from the clean bicubic
reduction that validation measures.

Everything that decides what happens next (weights, optimisers, schedulers, EMA, the
patch sampler and every random generator) is in the checkpoint, so a run killed at any
point resumes from its last checkpoint exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from blkassist.compat import basicsr_module, rrdbnet_class
from blkassist.fsutil import append_csv_row, atomic_path, truncate_csv_log, write_json
from blkassist.progress import ProgressSettings, TrainingProgress
from blkassist.rng import load_checkpoint, rng_state, seed_everything, set_rng_state
from blkassist.sr.degrade import DegradationSettings, Degrader, bicubic_reduce, sample_kernels
from blkassist.sr.models import build_rrdbnet, rrdbnet_params
from blkassist.sr.train.losses import (
    PerceptualLoss,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)
from blkassist.sr.train.patches import PatchSampler, PatchSource

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """An esrgan.NAME run's training settings; no defaults here: config/schema.yaml's
    $defs/esrgan_run fills them (blkassist.sr.train.run.train_settings reads them)."""

    SECTION: ClassVar[str] = "esrgan_run"
    gt_size: int
    batch_size: int
    iterations: int
    checkpoint_every: int
    validate_every: int
    keep_checkpoints: int
    validation_crops: int
    validation_degradation: str
    patience: int
    min_delta: float
    lr: float
    betas: tuple[float, float]
    milestones: tuple[int, ...]
    gamma: float
    ema_decay: float
    ema_warmup: bool
    clean_fraction: float
    l1: float
    perceptual: float
    gan: float
    mask_mode: str
    seed: int
    amp: str
    degradation: dict  # the run's overrides only: they, not the schema's values, name it

    def digest(self) -> str:
        """Identity of the recipe: checkpoints of another recipe are never resumed."""
        fixed = {k: v for k, v in asdict(self).items() if k not in ("iterations", "patience")}
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:12]


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the update after optimiser step `step` (1 = the first).

    Warm-up follows diffusers' EMAModel (the Conceptor trainer's EMA): 0 at the first step,
    then (1 + n) / (10 + n) with n = step - 1, capped at `decay`. Without it a short run's
    EMA stays at the starting weights (0.999 keeps 99.6% of them after 4 steps).
    """
    if not warmup:
        return decay
    n = step - 1
    return 0.0 if n <= 0 else min(decay, (1 + n) / (10 + n))


def gradient_mean(image: np.ndarray) -> float:
    luma = image.astype(np.float32).mean(axis=2)
    gy, gx = np.gradient(luma)
    return float(np.hypot(gx, gy).mean())


def image_metrics(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM (basicsr's) and sharpness: output's mean gradient over the target's."""
    metrics = basicsr_module("basicsr.metrics")
    return {
        "psnr": float(metrics.calculate_psnr(output, target, crop_border=0)),
        "ssim": float(metrics.calculate_ssim(output, target, crop_border=0)),
        "sharpness": gradient_mean(output) / max(gradient_mean(target), 1e-6),
    }


def _to_uint8(batch: torch.Tensor) -> np.ndarray:
    return (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class EsrganTrainer:
    def __init__(
        self,
        settings: TrainSettings,
        train_sources: list[PatchSource],
        validation_sources: list[PatchSource],
        init_weights: str,
        run_dir: str | Path,
        device: str = "cpu",
        vgg19: str | None = None,
    ):
        self.settings = settings
        self.run_dir = Path(run_dir) / settings.digest()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        seed_everything(settings.seed)
        # basicsr's own network: building it draws its random init from the seeded RNG, and
        # every later draw (patches, degradations) follows, so a run trains as it always has.
        self.generator = build_rrdbnet(
            rrdbnet_params(init_weights), init_weights, network=rrdbnet_class()
        ).to(self.device)
        self.generator.train()
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        discriminator = basicsr_module("basicsr.archs.discriminator_arch").UNetDiscriminatorSN
        self.discriminator = discriminator(3, 64, True).to(self.device)
        self.perceptual = PerceptualLoss(vgg19).to(self.device) if settings.perceptual else None
        adam = {"lr": settings.lr, "betas": tuple(settings.betas)}
        self.opt_g = torch.optim.Adam(self.generator.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam)
        decay = {"milestones": list(settings.milestones), "gamma": settings.gamma}
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, **decay)
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, **decay)
        use_amp = settings.amp == "on" or (settings.amp == "auto" and self.device.type == "cuda")
        self.amp = use_amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.degradation = DegradationSettings.from_config(settings.degradation)
        self.degrader = Degrader(self.degradation, self.device)
        self.sampler = PatchSampler(
            train_sources, settings.gt_size, settings.seed, settings.mask_mode
        )
        self.validation_sources = validation_sources or train_sources
        self.iteration = 0
        self.best = {"psnr": -1.0, "iteration": 0}
        self.bad_validations = 0
        self.resumed_from = self._resume()

    # -- checkpoints -----------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / "checkpoints").glob("iter-*.pth"))

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "generator": self.generator.state_dict(),
            "ema": self.ema.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
            "bad_validations": self.bad_validations,
            "settings": asdict(self.settings),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.best = state["best"]
        self.bad_validations = state["bad_validations"]

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoints" / f"iter-{self.iteration:08d}.pth"
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        for old in self._checkpoints()[: -self.settings.keep_checkpoints]:
            old.unlink()
        return path

    def _resume(self) -> Path | None:
        checkpoints = self._checkpoints()
        if not checkpoints:
            return None
        state = load_checkpoint(checkpoints[-1], self.device)
        self.load_state_dict(state)
        for name in ("losses.csv", "validation.csv"):  # drop rows a killed run logged later
            truncate_csv_log(self.run_dir / name, "iteration", self.iteration)
        log.info("resumed from %s (iteration %d)", checkpoints[-1], self.iteration)
        return checkpoints[-1]

    # -- training --------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """HR patches and their LR inputs: a `clean_fraction` share reduced cleanly (bicubic,
        as validation and a finished scan), the rest by the degradation pipeline."""
        patches = self.sampler.sample(self.settings.batch_size)
        hr = torch.from_numpy(patches).to(self.device).permute(0, 3, 1, 2).float() / 255
        lr = bicubic_reduce(hr, self.degradation.scale)
        degraded = torch.from_numpy(np.random.uniform(size=len(hr)) >= self.settings.clean_fraction)
        if degraded.any():
            kernels = sample_kernels(self.degradation, int(degraded.sum()))
            lr[degraded.to(self.device)] = self.degrader(hr[degraded.to(self.device)], kernels)
        return lr, hr

    def train_step(self) -> dict[str, float]:
        s = self.settings
        lr_batch, hr = self._batch()
        autocast = torch.autocast(self.device.type, enabled=self.amp)
        self.discriminator.requires_grad_(False)
        with autocast:
            sr = self.generator(lr_batch)
            losses = {"l1": s.l1 * F.l1_loss(sr, hr)}
            if self.perceptual is not None:
                losses["perceptual"] = s.perceptual * self.perceptual(sr, hr)
            if s.gan:
                real = self.discriminator(hr).detach()
                losses["gan_g"] = s.gan * relativistic_generator_loss(real, self.discriminator(sr))
        loss_g = sum(losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        if s.gan:
            self.discriminator.requires_grad_(True)
            with autocast:
                loss_d = relativistic_discriminator_loss(
                    self.discriminator(hr), self.discriminator(sr.detach())
                )
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            losses["gan_d"] = loss_d
        self.scaler.update()
        self.sched_g.step()
        if s.gan:
            self.sched_d.step()
        self._update_ema()
        self.iteration += 1
        return {name: float(value.detach()) for name, value in losses.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        step = self.iteration + 1  # called before the step is counted
        decay = ema_decay_at(step, self.settings.ema_decay, self.settings.ema_warmup)
        for ema, live in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            ema.copy_(live)

    # -- validation ------------------------------------------------------------------
    def validation_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed held-out (LR, HR) crops, made once with a fixed seed and kept on disk.

        `validation_degradation: bicubic` (default) measures what the artist does with the
        model, enlarging a clean finished scan; `realesrgan` uses the training degradation.
        """
        path = self.run_dir / "validation.pt"
        if path.exists():
            pairs = torch.load(path, weights_only=True)
            return pairs["lr"], pairs["hr"]
        saved = rng_state()
        seed_everything(self.settings.seed + 1)
        sampler = PatchSampler(
            self.validation_sources,
            self.settings.gt_size,
            self.settings.seed + 1,
            self.settings.mask_mode,
            jitter=0,
        )
        hr = torch.from_numpy(sampler.sample(self.settings.validation_crops))
        hr = hr.permute(0, 3, 1, 2).float() / 255
        if self.settings.validation_degradation == "bicubic":
            lr = bicubic_reduce(hr, self.degradation.scale)
        else:
            kernels = sample_kernels(self.degradation, len(hr))
            lr = self.degrader(hr.to(self.device), kernels).cpu()
        set_rng_state(saved)
        with atomic_path(path) as tmp:
            torch.save({"lr": lr, "hr": hr}, tmp)
        return lr, hr

    @torch.no_grad()
    def evaluate(self, model=None) -> dict[str, float]:
        """Mean metrics over the validation crops; model=None means bicubic."""
        lr, hr = self.validation_pairs()
        rows = []
        for index in range(len(lr)):
            low = lr[index : index + 1].to(self.device)
            if model is None:
                out = F.interpolate(low, size=hr.shape[2:], mode="bicubic")
            else:
                out = model(low)
            rows.append(image_metrics(_to_uint8(out)[0], _to_uint8(hr[index : index + 1])[0]))
        return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}

    # -- the run ---------------------------------------------------------------------
    def _validate(self) -> bool:
        """Validate the EMA generator; keep the best; return True to stop early."""
        metrics = self.evaluate(self.ema)
        append_csv_row(
            self.run_dir / "validation.csv",
            {
                "iteration": self.iteration,
                "model": "ema",
                **{k: round(v, 4) for k, v in metrics.items()},
            },
        )
        log.info("iteration %d validation: %s", self.iteration, metrics)
        if metrics["psnr"] > self.best["psnr"] + self.settings.min_delta:
            self.best = {"psnr": metrics["psnr"], "iteration": self.iteration, **metrics}
            self.bad_validations = 0
            with atomic_path(self.run_dir / "best_ema.pth") as tmp:
                torch.save(self.ema.state_dict(), tmp)
        else:
            self.bad_validations += 1
        return self.bad_validations >= self.settings.patience

    def run(
        self,
        stop_after: int | None = None,
        progress: ProgressSettings | None = None,
        label: str = "Real-ESRGAN",
    ) -> dict:
        """Train to the configured iterations (or stop early); `stop_after` caps this call;
        `progress` logs a progress line at its interval (generator loss, its lr)."""
        s = self.settings
        if self.iteration == 0 and not (self.run_dir / "validation.csv").exists():
            bicubic = self.evaluate(None)
            append_csv_row(
                self.run_dir / "validation.csv",
                {
                    "iteration": 0,
                    "model": "bicubic",
                    **{k: round(v, 4) for k, v in bicubic.items()},
                },
            )
            self._validate()  # the starting weights, as shipped
        target = s.iterations if stop_after is None else min(s.iterations, stop_after)
        started, first = time.perf_counter(), self.iteration
        stopped_early = False
        reporter = TrainingProgress(
            label, s.iterations, self.iteration, progress, self.device, unit="iteration"
        )
        while self.iteration < target and not stopped_early:
            losses = self.train_step()
            generator_loss = sum(v for k, v in losses.items() if k != "gan_d")
            reporter.update(self.iteration, generator_loss, self.sched_g.get_last_lr()[0])
            append_csv_row(
                self.run_dir / "losses.csv",
                {
                    "iteration": self.iteration,
                    "lr": self.sched_g.get_last_lr()[0],
                    **{k: round(v, 6) for k, v in losses.items()},
                },
            )
            if self.iteration % s.validate_every == 0 or self.iteration == s.iterations:
                stopped_early = self._validate()
            if (
                self.iteration % s.checkpoint_every == 0
                or self.iteration == target
                or stopped_early
            ):
                self.save_checkpoint()
        seconds = time.perf_counter() - started
        done = self.iteration - first
        return {
            "iterations": self.iteration,
            "stopped_early": stopped_early,
            "iterations_per_s": done / seconds if done else 0.0,
            "best": self.best,
        }

    def choice(self) -> dict:
        """What validation chose, against the starting weights on the same held-out crops:
        `fine_tuned` is False when no trained iteration beat them by min_delta (the export
        is then the starting weights), and `verdict` says so in a sentence."""
        with open(self.run_dir / "validation.csv") as handle:
            ema = {
                int(row["iteration"]): {k: float(row[k]) for k in ("psnr", "ssim", "sharpness")}
                for row in csv.DictReader(handle)
                if row["model"] == "ema"
            }
        chosen, start = self.best["iteration"], ema[0]
        best, crops = ema[chosen], f"{self.settings.validation_crops} held-out crops"
        if chosen:
            verdict = (
                f"fine-tune chosen: the EMA weights of iteration {chosen} beat the starting "
                f"weights by {best['psnr'] - start['psnr']:.2f} dB PSNR ({start['psnr']:.2f} -> "
                f"{best['psnr']:.2f} dB, SSIM {start['ssim']:.3f} -> {best['ssim']:.3f}) on {crops}"
            )
        else:
            trained = {i: m["psnr"] for i, m in ema.items() if i}
            closest = max(trained, key=trained.get, default=None)
            tried = (
                f"best trained: iteration {closest}, {trained[closest]:.4f} dB"
                if closest
                else "no trained iteration was validated"
            )
            verdict = (
                f"NOT fine-tuned: no trained iteration beat the starting weights by min_delta "
                f"{self.settings.min_delta} dB PSNR on {crops} (starting weights "
                f"{start['psnr']:.4f} dB; {tried}); the export is the starting weights unchanged"
            )
        return {
            "weights": "EMA at best validation PSNR",
            "iteration": chosen,
            **best,
            "fine_tuned": chosen > 0,
            "starting_weights": start,
            "psnr_gain_db": round(best["psnr"] - start["psnr"], 4),
            "min_delta": self.settings.min_delta,
            "verdict": verdict,
        }

    def export(self, path: str | Path) -> None:
        """The best EMA generator in the official Real-ESRGAN layout (params_ema)."""
        best = self.run_dir / "best_ema.pth"
        params = torch.load(best, weights_only=True) if best.exists() else self.ema.state_dict()
        with atomic_path(path) as tmp:
            torch.save({"params_ema": {k: v.cpu() for k, v in params.items()}}, tmp)


def plot_validation(csv_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for axis, key in zip(axes, ("psnr", "ssim", "sharpness"), strict=True):
        ema = [(int(r["iteration"]), float(r[key])) for r in rows if r["model"] == "ema"]
        bicubic = [float(r[key]) for r in rows if r["model"] == "bicubic"]
        axis.plot([i for i, _ in ema], [v for _, v in ema], marker="o", label="fine-tuned (EMA)")
        if bicubic:
            axis.axhline(bicubic[0], color="grey", linestyle="--", label="bicubic")
        axis.set_title(key)
        axis.set_xlabel("iteration")
    axes[0].legend()
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_model_card(
    path, trainer: EsrganTrainer, sources: dict, result: dict, init: str, licences=None
) -> None:
    chosen = trainer.choice()
    warning = {} if chosen["fine_tuned"] else {"warning": chosen["verdict"]}
    write_json(
        path,
        {
            "model": "RRDBNet x4 (Real-ESRGAN), fine-tuned on the artist's scans",
            **warning,
            "initialised_from": init,
            "recipe": asdict(trainer.settings),
            "recipe_digest": trainer.settings.digest(),
            "data": sources,
            "chosen": chosen,
            "run": result,
            "licences": licences,
        },
    )
