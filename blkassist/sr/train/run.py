"""One fine-tuning run as a workflow job: data from the corpus manifests, a leased
device, resume from the last checkpoint, export plus model card and validation plot."""

from __future__ import annotations

import logging
import shutil

import torch

from blkassist.corpus.collections import mask_for
from blkassist.corpus.datasets import split_of
from blkassist.corpus.normalise import distinct_rows
from blkassist.devices import lease_device
from blkassist.progress import ProgressSettings
from blkassist.sr.degrade import DegradationSettings
from blkassist.sr.train.patches import PatchSource
from blkassist.sr.train.trainer import (
    EsrganTrainer,
    TrainSettings,
    plot_validation,
    write_model_card,
)

log = logging.getLogger(__name__)


def train_settings(config: dict) -> TrainSettings:
    loss = config["loss"]
    return TrainSettings(
        gt_size=config["gt_size"],
        batch_size=config["batch_size"],
        iterations=config["iterations"],
        checkpoint_every=config["checkpoint_every"],
        validate_every=config["validate_every"],
        keep_checkpoints=config["keep_checkpoints"],
        validation_crops=config["validation_crops"],
        validation_degradation=config["validation_degradation"],
        patience=config["patience"],
        min_delta=config["min_delta"],
        lr=config["lr"],
        betas=tuple(config["betas"]),
        milestones=tuple(config["milestones"]),
        gamma=config["gamma"],
        ema_decay=config["ema_decay"],
        ema_warmup=config["ema_warmup"],
        clean_fraction=config["clean_fraction"],
        l1=loss["l1"],
        perceptual=loss["perceptual"],
        gan=loss["gan"],
        mask_mode=config["mask_mode"],
        seed=config["seed"],
        amp=config["amp"],
        degradation=config["degradation"],
    )


def split_sources(manifests: list[str], fraction: float, seed: int):
    """Training and held-out sources (each distinct scan once), with artist masks."""
    train, held_out = [], []
    rows = distinct_rows(manifests)
    for row in rows:
        mask = mask_for(row.source)
        source = PatchSource(row.image, str(mask) if mask else None)
        (held_out if split_of(row.id, fraction, seed) == "validation" else train).append(source)
    if not train:
        train, held_out = held_out, []
    return train, held_out, sorted(row.sha256 for row in rows)


def train_run(
    name: str,
    config: dict,
    manifests: list[str],
    init_weights: str,
    run_dir: str,
    export: str,
    model_card: str,
    validation_csv: str,
    validation_plot: str,
    lock_dir: str,
    threads: int,
    progress: ProgressSettings | None = None,
    licences: list[dict] | None = None,
) -> dict:
    settings = train_settings(config)
    key = f"esrgan.{name}"
    degradation = DegradationSettings.from_config(settings.degradation, f"{key}.degradation")
    if settings.clean_fraction < 1:
        degradation.check_patch_size(settings.gt_size, key)
    train, held_out, hashes = split_sources(
        manifests, config["validation_fraction"], config["seed"]
    )
    torch.set_num_threads(max(1, threads))
    with lease_device(lock_dir) as lease:
        trainer = EsrganTrainer(
            settings, train, held_out, init_weights, run_dir, lease.torch_device, config["vgg19"]
        )
        if trainer.resumed_from:
            log.info("resuming %s at iteration %d", name, trainer.iteration)
        result = trainer.run(progress=progress, label=f"esrgan.{name}")
        trainer.export(export)
    shutil.copyfile(trainer.run_dir / "validation.csv", validation_csv)
    plot_validation(validation_csv, validation_plot)
    write_model_card(
        model_card,
        trainer,
        {"scans": hashes, "training_images": len(train), "held_out_images": len(held_out)},
        {**result, "device": lease.torch_device},
        init_weights,
        licences,
    )
    log.info("%s: %s", name, result)
    chosen = trainer.choice()
    (log.info if chosen["fine_tuned"] else log.warning)("%s: %s", name, chosen["verdict"])
    return result
