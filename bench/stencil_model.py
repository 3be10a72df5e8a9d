"""Tiny BLK-Stencil model on the CPU: time and memory of a transparent-VAE training step,
encode, decode (single pass and 8-way median) and one RGBA asset through the tiny Flux.

    .venv/bin/python bench/stencil_model.py [--sizes 64 128] [--batch 8] [--threads 1]

Prints one row per (phase, size): median seconds over --repeat runs and the process's
peak RSS so far (ru_maxrss). Timings are wall-clock: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(function, repeat: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gen-steps", type=int, default=4)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from blkassist.config import schema_settings
    from blkassist.flux.generate import render
    from blkassist.flux.loader import load_flux
    from blkassist.stencil_model.assets import decode_rgba
    from blkassist.stencil_model.settings import TransparentVAESpec
    from blkassist.stencil_model.shapes import KINDS, ink_shape
    from blkassist.stencil_model.train_vae import VaeTraining, train_transparent_vae

    torch.set_num_threads(args.threads)
    flux = load_flux(REPO / "resources" / "flux" / "tiny.yaml")
    spec = TransparentVAESpec.from_yaml(REPO / "resources" / "stencil" / "tiny_vae.yaml")
    rows = []

    def measure(size: int) -> None:
        def add(phase, what, seconds):
            rows.append((phase, size, what, seconds, peak_rss_mb()))

        shapes = [ink_shape(size, KINDS[i % len(KINDS)], i) for i in range(args.batch)]
        images = torch.from_numpy(np.stack([np.asarray(s, np.float32) / 255 for s in shapes]))
        images = images.permute(0, 3, 1, 2).contiguous()
        # Per step: a run of 1 + 10 steps minus a run of 1 (model set-up cancels out).
        # The schema's stencil.vae.train settings (lr, offset weight...) at this size and batch.
        one = schema_settings(VaeTraining, {"size": size, "steps": 1, "batch_size": args.batch})
        eleven = schema_settings(VaeTraining, {"size": size, "steps": 11, "batch_size": args.batch})
        seconds = (
            median_seconds(lambda: train_transparent_vae(flux.vae, spec, images, eleven, 99), 1)
            - median_seconds(lambda: train_transparent_vae(flux.vae, spec, images, one, 99), 1)
        ) / 10
        add("vae train step", f"batch {args.batch}", seconds)
        settings = one
        model, _ = train_transparent_vae(flux.vae, spec, images, settings, 1)
        with torch.no_grad():
            latent = model.encode(flux.vae, images[:1])
            seconds = median_seconds(lambda: model.encode(flux.vae, images[:1]), args.repeat)
            add("encode", "1 image", seconds)
            for augment, label in ((False, "decode 1 pass"), (True, "decode 8-way median")):
                seconds = median_seconds(
                    lambda a=augment: model.decode(flux.vae, latent, augment=a), args.repeat
                )
                add(label, "1 image", seconds)
        pipe = flux.pipeline()
        image = {"width": size, "height": size, "guidance": 3.5, "prompt": "FG layer, ink cloud",
                 "max_sequence_length": 64, "output_type": "latent"}  # fmt: skip

        def asset():
            packed = render(pipe, seed=0, steps=args.gen_steps, **image)
            return decode_rgba(flux, model, packed, size, size, True)

        add("RGBA asset", f"{args.gen_steps} steps + 8-way", median_seconds(asset, 2))

    for size in args.sizes:
        measure(size)
    print(f"torch {torch.__version__}, {args.threads} thread(s); peak RSS is cumulative")
    print(f"{'phase':<22}{'size':>6}  {'what':<22}{'seconds':>10}{'peak RSS MB':>13}")
    for phase, size, what, seconds, rss in rows:
        print(f"{phase:<22}{size:>6}  {what:<22}{seconds:>10.4f}{rss:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
