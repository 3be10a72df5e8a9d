"""Training step time of the tiny random Flux with the schema's recipes, on the CPU.

    .venv/bin/python bench/flux_train_step.py [--size 64 256]
        [--recipes texture conceptor stencil] [--steps 5] [--threads 2] [--quick]

For each recipe and square image size: a training split of 4 demo images is written, the
trainer is built (caches encoded once, not timed), one warm-up optimiser step is taken,
then `--steps` optimiser steps are timed. The texture recipe's step is 8 accumulated
batches (AdamW 8-bit); Conceptor's is one batch (Prodigy); the Stencil style LoRA's is one
batch of RGBA assets from a real Stencil set (resolution max(128, size), aspect buckets per
category) encoded by a random tiny transparent VAE, timed in the curriculum's last stage
(singles, pairs, triples and extras; AdamW 8-bit, polynomial decay). Printed: median seconds per
optimiser step and per batch, and the process's peak RSS. The full-size model's figures
come from bench/flux_gpu_check.py on a GPU.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
TINY_SPEC = REPO / "resources" / "flux" / "tiny.yaml"


def stencil_trainer(recipe, size: int, work: Path, components=None, vae_spec=None):
    """A StencilTrainer on a real (small) Stencil set at about size^2 pixels (buckets per
    category), with a random transparent VAE, already in its last curriculum stage. Also
    used by bench/stencil_gpu_check.py with the full-size models."""
    from blkassist.config import validate_config
    from blkassist.flux.loader import load_flux
    from blkassist.stencil.dataset import build_stencil_dataset
    from blkassist.stencil_model.curriculum import Curriculum, StencilTrainer
    from blkassist.stencil_model.vae import load_transparent_vae

    components = components or load_flux(TINY_SPEC)
    vae_spec = vae_spec or REPO / "resources" / "stencil" / "tiny_vae.yaml"
    resolution = max(128, -(-size // 64) * 64)
    config = {"stencil": {"datasets": {"b": {"size": 8, "resolution": resolution}}}}
    validate_config(config, SCHEMA)
    dataset = work / f"stencil-{size}" / "stencil-b"
    stencil = config["stencil"]
    build_stencil_dataset("b", stencil["datasets"]["b"], stencil["synthetic"], [], str(dataset))
    vae = load_transparent_vae(vae_spec, None, components.device, components.dtype)
    record = {"spec": str(vae_spec), "weights": None, "sha256": "random"}
    curriculum = Curriculum(pairs_from=1, triples_from=2, pairs_share=0.4, triples_share=0.2)
    trainer = StencilTrainer(recipe, components, dataset, work / f"stencil-{size}", vae=vae,
                             vae_record=record, curriculum=curriculum)  # fmt: skip
    for _ in range(2):  # into the last stage
        trainer.train_step()
    return trainer, f"~{resolution}^2 buckets"


def measure(kind: str, size: int, steps: int, work: Path) -> dict:
    from blkassist.demo.training_split import write_demo_split
    from blkassist.flux.loader import load_flux
    from blkassist.flux.recipe import schema_recipe
    from blkassist.flux.trainer import FluxLoraTrainer

    overrides = {"quantize": False, "gradient_checkpointing": False, "sample_seeds": [],
                 "max_sequence_length": 64, "caption_variants": 2}  # fmt: skip
    recipe = schema_recipe(kind, overrides, SCHEMA)
    if kind == "stencil":
        trainer, shown = stencil_trainer(recipe, size, work)
    else:
        shown = size
        split = work / f"{kind}-{size}" / "train"
        write_demo_split(split, count=4, buckets=((size, size),))
        trainer = FluxLoraTrainer(recipe, load_flux(TINY_SPEC), split, work / f"{kind}-{size}")
    trainer.train_step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        seconds.append(time.perf_counter() - start)
    per_step = statistics.median(seconds)
    return {
        "recipe": kind,
        "size": shown,
        "optimizer": trainer.optimizer_record["used"].rsplit(".", 1)[-1],
        "batches/step": recipe.gradient_accumulation,
        "s/step": round(per_step, 4),
        "s/batch": round(per_step / recipe.gradient_accumulation, 4),
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--recipes", nargs="+", help="default: texture conceptor stencil")
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="size 64, 2 steps, texture (or --recipes)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps = [64], 2
    args.recipes = args.recipes or (
        ["texture"] if args.quick else ["texture", "conceptor", "stencil"]
    )
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="flux-train-step-"))
    rows = []
    try:
        for kind in args.recipes:
            for size in args.size:
                rows.append(measure(kind, size, args.steps, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
