"""Train a (tiny) transparent VAE against a frozen Flux VAE on a folder of RGBA PNGs, until
its encode -> decode round trip gives the alpha back; report the error in a model card.

Loss: alpha L1 + colour L1 where covered (colour under alpha 0 is undefined) + a small
penalty on the offset, which keeps the latent near what the Flux VAE itself would give.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from blkassist.config import settings_from
from blkassist.errors import InputImageError
from blkassist.fsutil import write_json
from blkassist.progress import ProgressSettings, TrainingProgress
from blkassist.stencil_model.preview import over_checkerboard
from blkassist.stencil_model.settings import TransparentVAESpec
from blkassist.stencil_model.vae import TransparentVAE, save_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaeTraining:
    """stencil.vae.train; no defaults here: config/schema.yaml fills them."""

    SECTION: ClassVar[str] = "stencil.vae.train"
    size: int
    steps: int
    batch_size: int
    lr: float
    offset_weight: float
    holdout: int
    target_alpha_error: float
    seed: int


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """The whole image, reduced to fit a size x size square on a clear ground; filtered in
    premultiplied form so clear pixels add no colour fringe."""
    rgba = image.convert("RGBA")
    scale = size / max(rgba.size)
    new = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
    reduced = rgba.convert("RGBa").resize(new, Image.Resampling.LANCZOS).convert("RGBA")
    square = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    square.paste(reduced, ((size - new[0]) // 2, (size - new[1]) // 2))
    return square


def read_rgba_folder(folder: str | os.PathLike, size: int) -> tuple[torch.Tensor, list[str]]:
    """Every PNG under `folder` (sorted, recursive) as (N, 4, size, size) in [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(
            f"{folder}: RGBA asset folder not found. Fix: set stencil.vae.train.assets to a "
            "folder of RGBA PNGs (e.g. a Stencil dataset under datasets/)."
        )
    paths = sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))
    if not paths:
        raise InputImageError(f"{folder}: no PNG images found (RGBA assets expected).")
    arrays, with_alpha = [], 0
    for path in paths:
        try:
            with Image.open(path) as image:
                with_alpha += image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                arrays.append(np.asarray(fit_square(image, size), dtype=np.float32) / 255)
        except OSError as error:
            raise InputImageError(f"{path}: unreadable image ({error}).") from None
    if not with_alpha:
        raise InputImageError(
            f"{folder}: none of the {len(paths)} PNGs has an alpha channel; the transparent "
            "VAE learns alpha from RGBA assets."
        )
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return batch, [str(p.relative_to(folder)) for p in paths]


def held_out(count: int, holdout: int) -> list[int]:
    """Evenly spread indices (sorted names come grouped by kind: take from every group)."""
    return sorted({round(i * count / holdout) for i in range(holdout)})


def _random_view(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Alpha-safe augmentation: flips and quarter turns only."""
    turns = int(torch.randint(4, (1,), generator=generator))
    if torch.rand(1, generator=generator) < 0.5:
        batch = torch.flip(batch, dims=(3,))
    return torch.rot90(batch, k=turns, dims=(2, 3))


def round_trip_errors(model: TransparentVAE, flux_vae, images: torch.Tensor) -> dict:
    """Mean and 99th-percentile alpha error of encode -> decode (8-way median), and the
    colour error where the original is at least half covered, all in [0, 1] units."""
    with torch.no_grad():
        decoded = torch.cat(
            [model.decode(flux_vae, model.encode(flux_vae, image[None])) for image in images]
        ).float()
    alpha, got = images[:, 3], decoded[:, 3]
    covered = alpha >= 0.5
    colour = (decoded[:, :3] - images[:, :3]).abs().mean(dim=1)[covered]
    error = (got - alpha).abs()
    return {
        "alpha_mae": float(error.mean()),
        "alpha_mae_if_all_clear": float(alpha.mean()),  # what guessing "clear" would score
        "alpha_p99": float(torch.quantile(error.flatten(), 0.99)),
        "colour_mae_covered": float(colour.mean()) if colour.numel() else None,
        "images": len(images),
    }, decoded


def train_transparent_vae(
    flux_vae,
    spec: TransparentVAESpec,
    images: torch.Tensor,
    settings: VaeTraining,
    history_every: int = 50,
    progress: ProgressSettings | None = None,
) -> tuple[TransparentVAE, list[dict]]:
    """Optimise encoder and decoder (the Flux VAE stays frozen); returns the model in eval
    mode and the losses every `history_every` steps (for the model card); `progress` logs
    a progress line at its interval."""
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = TransparentVAE(spec).train()
    flux_vae.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    reporter = TrainingProgress("transparent VAE", settings.steps, 0, progress)
    for step in range(1, settings.steps + 1):
        picks = torch.randint(len(images), (settings.batch_size,), generator=generator)
        batch = _random_view(images[picks], generator)
        alpha = batch[:, 3:4]
        posterior = flux_vae.encode(model.flux_feed(batch)).latent_dist
        offset = model.offset(batch)
        latent = posterior.mean + posterior.std * offset
        out = model.decoder(flux_vae.decode(latent).sample * 0.5 + 0.5, latent)
        # L1 alone sits at "all clear" (the median of mostly clear pixels); the squared term
        # pulls covered pixels up from the first steps.
        alpha_error = out[:, 3:4] - alpha
        alpha_loss = alpha_error.abs().mean() + alpha_error.pow(2).mean()
        colour_loss = ((out[:, :3] - batch[:, :3]).abs() * alpha).mean()
        offset_loss = offset.pow(2).mean()
        loss = alpha_loss + colour_loss + settings.offset_weight * offset_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reporter.update(step, float(loss.detach()), optimizer.param_groups[0]["lr"])
        schedule.step()
        if step % history_every == 0 or step == settings.steps:
            row = {
                "step": step,
                "loss": float(loss.detach()),
                "alpha_l1": float(alpha_loss.detach()),
                "colour_l1": float(colour_loss.detach()),
                "offset_sq": float(offset_loss.detach()),
            }
            history.append(row)
    return model.eval().requires_grad_(False), history


def round_trip_sheet(originals: torch.Tensor, decoded: torch.Tensor) -> Image.Image:
    """Two rows over a checkerboard: the assets, then their round trips."""
    count, size = len(originals), originals.shape[-1]
    sheet = Image.new("RGB", (count * size, 2 * size), "white")
    for row, batch in enumerate((originals, decoded)):
        for index, image in enumerate(batch):
            array = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            tile = over_checkerboard(Image.fromarray(array, "RGBA"))
            sheet.paste(tile, (index * size, row * size))
    return sheet


def train_run(
    flux_model: str,
    spec_path: str,
    assets: str,
    weights_out: str,
    card_out: str,
    sheet_out: str,
    settings: dict,
    threads: int = 1,
    progress: ProgressSettings | None = None,
    licences: list[dict] | None = None,
) -> dict:
    """A workflow job: train on the assets folder, write weights, model card and sheet."""
    from blkassist.flux.generate import save_png
    from blkassist.flux.loader import load_flux

    torch.set_num_threads(max(1, threads))
    started = time.monotonic()
    config = settings_from(VaeTraining, settings, VaeTraining.SECTION)
    spec = TransparentVAESpec.from_yaml(spec_path)
    images, names = read_rgba_folder(assets, config.size)
    if len(images) <= config.holdout:
        raise InputImageError(
            f"{assets}: {len(images)} images, but {config.holdout} are held out for the "
            "round-trip check; add assets or lower stencil.vae.train.holdout."
        )
    held_index = held_out(len(images), config.holdout)
    held = images[held_index]
    train = images[[i for i in range(len(images)) if i not in held_index]]
    log.info("read %d RGBA assets from %s (%d held out)", len(images), assets, config.holdout)
    flux = load_flux(flux_model, "cpu", torch.float32)
    model, history = train_transparent_vae(flux.vae, spec, train, config, progress=progress)
    save_weights(model, weights_out)
    held_errors, held_decoded = round_trip_errors(model, flux.vae, held)
    train_errors, _ = round_trip_errors(model, flux.vae, train[: max(4, config.holdout)])
    save_png(round_trip_sheet(held, held_decoded), sheet_out)
    card = {
        "kind": "transparent VAE (offset encoder + RGBA decoder)",
        "spec": {k: v for k, v in asdict(spec).items() if k != "extra"},
        "spec_file": str(spec_path),
        "flux": flux.describe(),
        "flux_vae_identity": flux.identity["vae"],
        "assets": {
            "folder": str(assets),
            "count": len(images),
            "held_out": [names[i] for i in held_index],
        },
        "training": asdict(config),
        "history": history,
        "round_trip": {"held_out": held_errors, "train": train_errors},
        "alpha_ok": held_errors["alpha_mae"] <= config.target_alpha_error,
        "convention": "RGBA in [0, 1], straight colour; encoder input = padded RGB then alpha; "
        "decoder output channels R, G, B, A",
        "seconds": round(time.monotonic() - started, 1),
        "licences": licences,
    }
    write_json(card_out, card)
    level = logging.INFO if card["alpha_ok"] else logging.WARNING
    log.log(
        level,
        "round trip on %d held-out assets: alpha MAE %.4f (target %.3f); wrote %s, %s",
        len(held),
        held_errors["alpha_mae"],
        config.target_alpha_error,
        weights_out,
        card_out,
    )
    return card
