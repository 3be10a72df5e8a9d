"""Time and memory of the Flux LoRA recipes at full size on one GPU; prints JSON.

    .venv/bin/python bench/flux_gpu_check.py [--model SPEC_OR_FOLDER] [--size 1024] ...

By default the model is Flux.1-dev's full architecture with random weights (no download:
resources/flux/flux1-dev-random.yaml), so numbers are real but images are noise. It runs
the library's own code: load_flux (8-bit base, gradient checkpointing), FluxLoraTrainer's
train_step with the schema's recipes (Conceptor: LoRA rank 32, Prodigy; texture: rank 16,
AdamW 8-bit, 8 accumulated batches per optimiser step), bf16 autocast, and render for
generation. Each phase reports its error instead of stopping the others.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._gpu_check import REPO, Clock, argument_parser, median, run_check, warmed_pipeline

SCHEMA = REPO / "config" / "schema.yaml"
PHASES = ("train", "generate", "train_texture")


def parse_args(argv: list[str] | None = None):
    parser = argument_parser(__doc__.split("\n\n")[0], prog="bench/flux_gpu_check.py")
    parser.add_argument("--size", type=int, default=1024, help="square image side in pixels")
    parser.add_argument("--rank", type=int, default=32, help="Conceptor phase's LoRA rank")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--gen-steps", type=int, default=28, help="denoising steps per image")
    parser.add_argument("--images", type=int, default=2, help="timed generated images")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-train-texture", action="store_true")
    parser.add_argument(
        "--texture-steps",
        type=int,
        default=2,
        help="timed optimiser steps of the texture recipe (each of 8 accumulated batches)",
    )
    return parser.parse_args(argv)


def _train(args, components, device: Clock, work: Path, kind: str = "conceptor") -> dict:
    from blkassist.demo.training_split import write_demo_split
    from blkassist.flux.recipe import schema_recipe
    from blkassist.flux.trainer import FluxLoraTrainer

    overrides = {"quantize": not args.no_quantize, "sample_seeds": [], "caption_variants": 2}
    if kind == "conceptor":
        overrides.update(rank=args.rank, alpha=args.rank)
    recipe = schema_recipe(kind, overrides, SCHEMA)
    if getattr(components.transformer, "peft_config", None):
        components.transformer.delete_adapters(list(components.transformer.peft_config))
    split = work / kind / "train"
    write_demo_split(split, count=2, buckets=((args.size, args.size),))
    trainer = FluxLoraTrainer(recipe, components, split, work / kind / "run")
    device.reset_peak()
    steps = args.train_steps if kind == "conceptor" else args.texture_steps
    for _ in range(args.warmup_steps if kind == "conceptor" else 1):
        trainer.train_step()
    timed = [device.timed(trainer.train_step) for _ in range(steps)]
    trainer.transformer.eval()
    return {
        "recipe": kind,
        "optimizer": trainer.optimizer_record,
        "gradient_accumulation": recipe.gradient_accumulation,
        "seconds_per_step": median((t for t, _ in timed), 3),
        "step_seconds": [round(t, 3) for t, _ in timed],
        "peak_memory_gib": device.peak_gib(),
        "losses_finite": all(math.isfinite(row["loss"]) for _, row in timed),
        "trainable_parameters": sum(p.numel() for p in trainer.params),
    }


def _generate(args, components, device: Clock) -> dict:
    from blkassist.flux.generate import render

    prompt = "ink drawing, red circle, paper texture"
    pipe, image = warmed_pipeline(components, device, args.size, prompt)
    timed = [
        device.timed(lambda s=seed: render(pipe, seed=s, steps=args.gen_steps, **image))
        for seed in range(args.images)
    ]
    return {
        "seconds_per_image": median((t for t, _ in timed), 2),
        "image_seconds": [round(t, 2) for t, _ in timed],
        "denoising_steps": args.gen_steps,
        "peak_memory_gib": device.peak_gib(),
    }


def measure(args) -> dict:
    """The report; each phase (load, train, generate) records its error and the rest go on
    where they can."""
    import torch

    from blkassist.flux.loader import load_flux

    device = Clock(torch, args.device)
    report: dict = {
        "device": device.device_name(),
        "torch": torch.__version__,
        "model": args.model,
        "size": args.size,
        "rank": args.rank,
        "quantized": not args.no_quantize,
        "errors": {},
    }
    device.reset_peak()
    try:
        seconds, components = device.timed(
            lambda: load_flux(
                args.model, args.device, quantize=not args.no_quantize, gradient_checkpointing=True
            )
        )
    except Exception:
        report["errors"]["load"] = traceback.format_exc(limit=8)
        return report
    report["load_seconds"] = round(seconds, 1)
    report["memory_after_load_gib"] = device.held_gib()
    work = Path(tempfile.mkdtemp(prefix="flux-gpu-check-"))
    phases = {
        "train": lambda: _train(args, components, device, work),
        "generate": lambda: _generate(args, components, device),
        "train_texture": lambda: _train(args, components, device, work, "texture"),
    }
    try:
        for name, phase in phases.items():
            if getattr(args, f"skip_{name}"):
                continue
            try:
                report[name] = phase()
            except Exception:
                report["errors"][name] = traceback.format_exc(limit=8)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "generate" in report:
        report["generate"]["with_lora"] = "train" in report
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_check(args, lambda: measure(args), lambda report: bool(report["errors"]))


if __name__ == "__main__":
    sys.exit(main())
