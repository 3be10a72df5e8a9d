"""Training step time of the tiny random Flux with the schema's recipes, on the CPU.

    .venv/bin/python bench/flux_train_step.py [--size 64 256] [--recipes texture conceptor]
        [--steps 5] [--threads 2] [--quick]

For each recipe and square image size: a training split of 4 demo images is written, the
trainer is built (caches encoded once, not timed), one warm-up optimiser step is taken,
then `--steps` optimiser steps are timed. The texture recipe's step is 8 accumulated
batches (AdamW 8-bit); Conceptor's is one batch (Prodigy). Printed: median seconds per
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


def measure(kind: str, size: int, steps: int, work: Path) -> dict:
    from blkassist.flux.demo import write_demo_split
    from blkassist.flux.loader import load_flux
    from blkassist.flux.recipe import schema_recipe
    from blkassist.flux.trainer import FluxLoraTrainer

    overrides = {"quantize": False, "gradient_checkpointing": False, "sample_seeds": [],
                 "max_sequence_length": 64, "caption_variants": 2}  # fmt: skip
    recipe = schema_recipe(kind, overrides, SCHEMA)
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
        "size": size,
        "optimizer": trainer.optimizer_record["used"].rsplit(".", 1)[-1],
        "batches/step": recipe.gradient_accumulation,
        "s/step": round(per_step, 4),
        "s/batch": round(per_step / recipe.gradient_accumulation, 4),
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--recipes", nargs="+", default=["texture", "conceptor"])
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="size 64, 2 steps, texture")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.recipes = [64], 2, ["texture"]
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
