"""Seconds per refinement window at full size on one GPU, and what that means for the 3 Gpx
production mural; prints JSON.

    python bench/gpu_refine_check.py [--model SPEC_OR_FOLDER] [--tile 1024] [--gpus 4]
    python bench/gpu_refine_check.py --device cpu --model resources/flux/tiny.yaml \\
        --tile 64 --windows 1          # a smoke run of the script on the CPU

By default the model is Flux.1-dev's full architecture with random weights (no download:
resources/flux/flux1-dev-random.yaml) with an 8-bit (qint8) transformer, and a random
rank-16 LoRA on to_q/to_k/to_v/to_out.0 written to a .safetensors file and loaded the way
the tile jobs load the texture LoRA. It runs the library's own refiner (FluxRefiner) on
`tile`-sized windows at each pass's denoise of the production mural, `tiles_per_forward`
windows per forward, then multiplies by the windows of each pass of
config/production.yaml's diffusion mural (planned by the workflow's own functions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(ROOT / "resources" / "flux" / "flux1-dev-random.yaml")
    )
    parser.add_argument("--tile", type=int, default=1024, help="window side in pixels")
    parser.add_argument("--windows", type=int, default=2, help="timed windows per denoise")
    parser.add_argument("--per-forward", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-quantize", action="store_true", help="bf16 base, not qint8")
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--mural", default="mural_flux", help="the production diffusion mural")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output")
    return parser.parse_args(argv)


def random_lora(transformer, rank: int, path: Path) -> Path:
    """A LoRA file in diffusers' key layout for every attention projection."""
    import torch
    from safetensors.torch import save_file

    tensors, generator = {}, torch.Generator().manual_seed(0)
    for name, module in transformer.named_modules():
        if not name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            continue
        weight = module.weight
        out_features, in_features = weight.shape[0], weight.shape[1]
        down = torch.randn((rank, in_features), generator=generator) / in_features**0.5
        up = torch.randn((out_features, rank), generator=generator) * 1e-3
        tensors[f"transformer.{name}.lora_A.weight"] = down.to(torch.bfloat16)
        tensors[f"transformer.{name}.lora_B.weight"] = up.to(torch.bfloat16)
    save_file(tensors, str(path))
    return path


def production_passes(mural: str) -> tuple[list[dict], dict]:
    """Windows and denoise of each refinement pass of the production diffusion mural."""
    from blkassist.config import mural_settings, validate_config
    from blkassist.refine.settings import mural_refine_settings, plan_stages
    from blkassist.tiling import plan_mural

    config = yaml.safe_load((ROOT / "config/production.yaml").read_text())
    validate_config(config, ROOT / "config/schema.yaml")
    settings = mural_settings(config, mural)
    plan = plan_mural(
        16000, 12000, scale=settings.scale, target_long_side=settings.target_long_side,
        tile=settings.tile, tiles_per_job=settings.tiles_per_job,
    )  # fmt: skip
    refine = mural_refine_settings(config, mural)
    stages = plan_stages([(p.output_width, p.output_height) for p in plan.passes], refine)
    passes = [
        {"pass": s.name, "denoise": refine.pixel_settings(s)["denoise"], "windows": s.window_count}
        for s in stages
    ]
    return passes, {"final": [plan.final_width, plan.final_height], "steps": refine.steps}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from blkassist.flux.loader import load_flux
    from blkassist.refine.refiner import FluxRefiner

    result: dict = {"device": args.device, "model": args.model, "tile": args.tile}
    passes, mural = production_passes(args.mural)
    result["mural"] = mural
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(0)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        started = time.perf_counter()
        components = load_flux(args.model, args.device)
        lora = None
        if not args.no_lora:
            work = Path(tempfile.mkdtemp())
            lora = random_lora(components.transformer, args.rank, work / "texture.safetensors")
        refiner = FluxRefiner(
            components, lora=lora, steps=mural["steps"], max_sequence_length=512,
            quantize=not args.no_quantize,
        )  # fmt: skip
        result["load_seconds"] = round(time.perf_counter() - started, 1)
        result["quantized"] = not args.no_quantize
        result["lora"] = None if lora is None else {"rank": args.rank}
        rng = np.random.default_rng(0)
        timings = {}
        for per_forward in args.per_forward:
            windows = rng.integers(0, 256, (per_forward, args.tile, args.tile, 3), np.uint8)
            refiner.refine(windows, list(range(per_forward)), 0.3)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for denoise in sorted({p["denoise"] for p in passes}):
                seconds = []
                for i in range(max(1, args.windows // per_forward)):
                    sync()
                    t0 = time.perf_counter()
                    refiner.refine(
                        windows, [i * per_forward + k for k in range(per_forward)], denoise
                    )
                    sync()
                    seconds.append((time.perf_counter() - t0) / per_forward)
                timings.setdefault(per_forward, {})[denoise] = {
                    "seconds_per_window": round(statistics.median(seconds), 3),
                    "sampler_steps": refiner.describe(denoise)["sampler_steps"],
                }
            if cuda:
                timings[per_forward]["peak_memory_gib"] = round(
                    torch.cuda.max_memory_allocated() / 2**30, 2
                )
        result["timings"] = {str(k): {str(d): v for d, v in t.items()} for k, t in timings.items()}
        best = min(
            timings,
            key=lambda k: sum(timings[k][p["denoise"]]["seconds_per_window"] for p in passes),
        )
        rows, total = [], 0.0
        for entry in passes:
            per_window = timings[best][entry["denoise"]]["seconds_per_window"]
            hours = entry["windows"] * per_window / 3600
            total += hours
            rows.append({**entry, "seconds_per_window": per_window, "gpu_hours": round(hours, 2)})
        result["production"] = {
            "tiles_per_forward": best,
            "passes": rows,
            "gpu_hours": round(total, 2),
            "gpus": args.gpus,
            "wall_hours": round(total / args.gpus, 2),
            "note": "refinement windows only (excludes SR, blend, QA and model loads per job)",
        }
    except Exception as error:  # report what failed; the figures so far still print
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-2000:]
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
