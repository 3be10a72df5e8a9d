"""Full-size BLK-Stencil on one GPU: time and memory of a Stencil training step and of one
RGBA asset at 1024x1024; prints JSON.

    .venv/bin/python bench/stencil_gpu_check.py [--size 1024] [--gen-steps 50] ...
    .venv/bin/python bench/stencil_gpu_check.py --device cpu --model resources/flux/tiny.yaml \
        --vae-spec resources/stencil/tiny_vae.yaml --size 64 --gen-steps 2   # smoke run

Random weights of the real architectures (no download): Flux.1-dev from
resources/flux/flux1-dev-random.yaml and the published transparent VAE layout from
resources/stencil/transparent_vae.yaml, so figures are real and images are noise. The
library's own code runs: load_flux (8-bit base, gradient checkpointing), the transparent
encoder on a small real Stencil set, the StencilTrainer's step (the schema's stencil recipe:
LoRA rank 16 on to_q/to_k/to_v/to_out.0, AdamW 8-bit, polynomial decay, bf16 autocast, the
curriculum's last stage; prepare_seconds includes building the set and encoding it), and
generation through
blkassist.stencil_model.assets (latent -> transparent decoder with the 8-way median).
Each phase reports its error instead of stopping the others.
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


def parse_args(argv=None):
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--vae-spec", default=str(REPO / "resources/stencil/transparent_vae.yaml"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--gen-steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=2)
    return parser.parse_args(argv)


def _train(args, torch, components, vae, clock) -> dict:
    """The library's StencilTrainer (the schema's stencil recipe: AdamW 8-bit, polynomial
    decay) on a small real Stencil set at about size^2, in the curriculum's last stage."""
    from bench.flux_train_step import SCHEMA, stencil_trainer
    from blkassist.flux.recipe import schema_recipe

    overrides = {"rank": args.rank, "alpha": args.rank, "quantize": not args.no_quantize,
                 "caption_variants": 2, "sample_seeds": [], "validation_images": 1}  # fmt: skip
    recipe = schema_recipe("stencil", overrides, SCHEMA)
    work = Path(tempfile.mkdtemp(prefix="stencil-gpu-"))
    prepare_s, (trainer, shown) = clock.timed(
        lambda: stencil_trainer(recipe, args.size, work, components, args.vae_spec)
    )
    for _ in range(args.warmup_steps):
        trainer.train_step()
    clock.reset_peak()
    timed = [clock.timed(trainer.train_step) for _ in range(args.train_steps)]
    components.transformer.eval()
    components.transformer.delete_adapters("default")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "set": shown,
        "images": len(trainer.data.images),
        "prepare_seconds": round(prepare_s, 1),
        "optimizer": trainer.optimizer_record["used"],
        "seconds_per_step": median((t for t, _ in timed), 3),
        "peak_memory_gib": clock.peak_gib(),
        "losses_finite": all(math.isfinite(row["loss"]) for _, row in timed),
        "trainable_parameters": sum(p.numel() for p in trainer.params),
    }


def _generate(args, torch, components, vae, clock) -> dict:
    from blkassist.flux.generate import render
    from blkassist.stencil_model.assets import decode_rgba

    prompt = "FG layer, ink cloud, transparent background"
    pipe, image = warmed_pipeline(components, clock, args.size, prompt, output_type="latent")
    rows = []
    for seed in range(args.images):
        sample_s, packed = clock.timed(
            lambda s=seed: render(pipe, seed=s, steps=args.gen_steps, **image)
        )
        decode_s, _ = clock.timed(
            lambda p=packed: decode_rgba(components, vae, p, args.size, args.size, True)
        )
        rows.append((sample_s, decode_s))
    return {
        "seconds_per_image": median((a + b for a, b in rows), 2),
        "sampling_seconds": median((a for a, _ in rows), 2),
        "decode_8way_seconds": median((b for _, b in rows), 2),
        "denoising_steps": args.gen_steps,
        "peak_memory_gib": clock.peak_gib(),
    }


def measure(args) -> dict:
    import torch

    from blkassist.flux.loader import load_flux
    from blkassist.stencil_model.vae import load_transparent_vae

    clock = Clock(torch, args.device)
    report = {
        "device": clock.device_name(),
        "model": args.model,
        "vae_spec": args.vae_spec,
        "size": args.size,
        "rank": args.rank,
        "errors": {},
    }
    try:
        load_s, components = clock.timed(
            lambda: load_flux(
                args.model, args.device, quantize=not args.no_quantize, gradient_checkpointing=True
            )
        )
        vae = load_transparent_vae(args.vae_spec, None, components.device, components.dtype)
    except Exception:
        report["errors"]["load"] = traceback.format_exc(limit=8)
        return report
    report["load_seconds"] = round(load_s, 1)
    for name, phase in (("train", _train), ("generate", _generate)):
        try:
            report[name] = phase(args, torch, components, vae, clock)
        except Exception:
            report["errors"][name] = traceback.format_exc(limit=8)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    no_gpu = "no CUDA device visible; run with --device cpu for a smoke"
    return run_check(args, lambda: measure(args), lambda report: bool(report["errors"]), no_gpu)


if __name__ == "__main__":
    sys.exit(main())
