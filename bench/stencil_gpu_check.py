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

import argparse
import contextlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "resources/flux/flux1-dev-random.yaml"))
    parser.add_argument("--vae-spec", default=str(REPO / "resources/stencil/transparent_vae.yaml"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--gen-steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output")
    return parser.parse_args(argv)


class Clock:
    def __init__(self, torch, device):
        self.torch, self.cuda = torch, torch.device(device).type == "cuda"

    def timed(self, function):
        if self.cuda:
            self.torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter() - start, result

    def reset(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def gib(self):
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else 0.0


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
    clock.reset()
    timed = [clock.timed(trainer.train_step) for _ in range(args.train_steps)]
    components.transformer.eval()
    components.transformer.delete_adapters("default")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "set": shown,
        "images": len(trainer.data.images),
        "prepare_seconds": round(prepare_s, 1),
        "optimizer": trainer.optimizer_record["used"],
        "seconds_per_step": round(statistics.median(t for t, _ in timed), 3),
        "peak_memory_gib": clock.gib(),
        "losses_finite": all(math.isfinite(row["loss"]) for _, row in timed),
        "trainable_parameters": sum(p.numel() for p in trainer.params),
    }


def _generate(args, torch, components, vae, clock) -> dict:
    from blkassist.flux.generate import render
    from blkassist.stencil_model.assets import decode_rgba

    components.text_encoder.to(components.device)
    components.text_encoder_2.to(components.device)
    pipe = components.pipeline()
    image = {
        "width": args.size,
        "height": args.size,
        "guidance": 3.5,
        "prompt": "FG layer, ink cloud, transparent background",
        "output_type": "latent",
    }
    render(pipe, seed=0, steps=2, **image)  # warm-up
    clock.reset()
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
        "seconds_per_image": round(statistics.median(a + b for a, b in rows), 2),
        "sampling_seconds": round(statistics.median(a for a, _ in rows), 2),
        "decode_8way_seconds": round(statistics.median(b for _, b in rows), 2),
        "denoising_steps": args.gen_steps,
        "peak_memory_gib": clock.gib(),
    }


def measure(args) -> dict:
    import torch

    from blkassist.flux.loader import load_flux
    from blkassist.stencil_model.vae import load_transparent_vae

    clock = Clock(torch, args.device)
    report = {
        "device": torch.cuda.get_device_name(0) if clock.cuda else "cpu",
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
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible; run with --device cpu for a smoke"}))
        return 2
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory():
        report = measure(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
