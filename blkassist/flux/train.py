"""One Flux LoRA training job of the workflow (any assistant's recipe): lease a device,
load the base, train or resume, export the chosen adapter, and write the model card, the
chosen checkpoint's contact sheet and the loss plot.

The pieces: recipe.py (settings), data.py (samples and caches), objective.py (the
flow-matching loss), adapter.py (LoRA/LoKr and its file), optim.py (optimiser and
schedule), ema.py (weight averaging), trainer.py (the loop and checkpoints).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from blkassist.errors import ConfigError
from blkassist.flux.recipe import recipe_from_config
from blkassist.fsutil import atomic_path, write_json
from blkassist.progress import ProgressSettings

log = logging.getLogger(__name__)


def _copy(source: Path, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


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
    key: str = "recipe",
    title: str | None = None,
    contact_sheet: str | None = None,
    loss_plot: str | None = None,
    trainer_factory=None,
    loader=None,
    progress: ProgressSettings | None = None,
    licences: list[dict] | None = None,
) -> dict:
    """Train (or resume) and export; `config` is the schema-validated recipe mapping.
    `trainer_factory(recipe, components, train_dir, run_dir, validation_dir)` builds a
    trainer other than the plain FluxLoraTrainer, and `loader(model, device, recipe)` loads
    the base other than with load_flux (e.g. the Stencil curriculum on a fused layer LoRA).
    `progress` says how often a progress line is logged (None: never);
    `licences` (blkassist.licences) goes into the model card."""
    from blkassist.devices import lease_device
    from blkassist.flux.loader import load_flux
    from blkassist.flux.trainer import FluxLoraTrainer

    recipe = recipe_from_config(config, key)
    samples = recipe.sample_seeds and (recipe.sample_prompts or recipe.sample_count)
    if contact_sheet and not samples:
        raise ConfigError(
            f"{key}: the contact sheet needs samples; set sample_seeds and sample_count "
            "(or sample_prompts)."
        )
    torch.set_num_threads(max(1, threads))
    with lease_device(lock_dir) as lease:
        if loader:
            components = loader(model, lease.torch_device, recipe)
        else:
            components = load_flux(
                model,
                lease.torch_device,
                quantize=recipe.quantize,
                gradient_checkpointing=recipe.gradient_checkpointing,
                defer=True,  # the trainer places the parts in the order it needs them
            )
        factory = trainer_factory or FluxLoraTrainer
        trainer = factory(recipe, components, train_dir, run_dir, validation_dir)
        log.info(
            "training %s on %s: %d images (%d held out), run folder %s, optimiser %s, "
            "resuming from %s",
            key,
            train_dir,
            len(trainer.data.images),
            len(trainer.data.held_out),
            trainer.run_dir,
            trainer.optimizer_record,
            trainer.resumed_from or "nothing",
        )
        started = time.perf_counter()
        run = trainer.run(progress=progress, label=key.removesuffix(".recipe"))
        result = {**run, "device": lease.torch_device}
        chosen = trainer.export(export, chosen_step)
    if contact_sheet:
        _copy(Path(chosen["checkpoint"]) / "contact_sheet.png", contact_sheet)
    if loss_plot:
        _copy(trainer.run_dir / "losses.png", loss_plot)
    write_json(model_card, {**trainer.model_card(chosen, result, title), "licences": licences})
    log.info(
        "wrote %s and %s in %.1f s: %s", export, model_card, time.perf_counter() - started, result
    )
    return result
