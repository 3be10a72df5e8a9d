"""What a refinement tile job costs on one GPU, and what that means for the 3 Gpx production
mural; prints JSON. Ready to run unchanged on a 24 GB and an 80 GB card.

    python bench/gpu_refine_check.py                       # the production settings
    python bench/gpu_refine_check.py --memory-limit-gib 24 # an 80 GB card acting as a 3090
    python bench/gpu_refine_check.py --no-quantize         # bf16: needs a 48 GB card
    python bench/gpu_refine_check.py --device cpu --model resources/flux/tiny.yaml \\
        --tile 64 --windows 3                              # a smoke run on the CPU

By default the model is Flux.1-dev's full architecture with random weights (no download:
resources/flux/flux1-dev-random.yaml) and a random rank-16 LoRA on to_q/to_k/to_v/to_out.0,
with config/production.yaml's refinement settings (8-bit transformer, steps, windows per
forward and per job). It runs what a tile job runs: load_flux_refiner in its load order
(the load peak is measured from before the first byte reaches the device), then
refine_windows over a real canvas of `--windows` windows in zarr stores (reads, Flux,
anchoring on the device, writes), and reports per window: the median cost of each stage
over the forward groups (the first group, a warm-up, excluded) plus the load amortised
over a job of tiles_per_job windows; beside the measured peaks, the plan's estimate.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._gpu_check import GIB, REPO, Clock, argument_parser, run_check


def parse_args(argv=None):
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--mural", default="mural_flux", help="the production diffusion mural")
    parser.add_argument("--tile", type=int, help="window side (default: the mural's)")
    parser.add_argument("--overlap", type=int, help="default: the mural's (at most tile / 4)")
    parser.add_argument("--windows", type=int, default=9, help="windows refined (>= 3)")
    parser.add_argument("--per-forward", type=int, help="windows per forward (default: mural's)")
    parser.add_argument("--steps", type=int, help="model evaluations (default: the mural's)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--memory-limit-gib", type=float, help="act as a card this large")
    parser.add_argument("--gpus", type=int, default=4)
    return parser.parse_args(argv)


def random_lora(model: str, rank: int, path: Path) -> Path:
    """A LoRA file in diffusers' key layout for every attention projection, from the
    transformer's shapes alone (built on the meta device: no memory)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from blkassist.gpu_memory import flux_configs

    with torch.device("meta"):
        shapes = FluxTransformer2DModel.from_config(flux_configs(model)["transformer"])
    tensors, generator = {}, torch.Generator().manual_seed(0)
    for name, module in shapes.named_modules():
        if not name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            continue
        out_features, in_features = module.weight.shape
        down = torch.randn((rank, in_features), generator=generator) / in_features**0.5
        up = torch.randn((out_features, rank), generator=generator) * 1e-3
        tensors[f"transformer.{name}.lora_A.weight"] = down.to(torch.bfloat16)
        tensors[f"transformer.{name}.lora_B.weight"] = up.to(torch.bfloat16)
    save_file(tensors, str(path))
    return path


def production(mural: str) -> tuple[list[dict], dict]:
    """Windows and denoise of each refinement pass of the production diffusion mural, and
    its refinement settings."""
    from blkassist.config import mural_settings, validate_config
    from blkassist.refine.settings import mural_refine_settings, plan_stages
    from blkassist.tiling import plan_mural

    config = yaml.safe_load((REPO / "config/production.yaml").read_text())
    validate_config(config, REPO / "config/schema.yaml")
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
    return passes, {"final": [plan.final_width, plan.final_height], "settings": refine}


def _canvas(path: Path, width: int, height: int, seed: int):
    from blkassist import canvas

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bands = [100 + 60 * np.sin(xx / (9 + 4 * b)) * np.cos(yy / (13 + b)) for b in range(3)]
    pixels = np.stack(bands, -1) + rng.normal(0, 10, (height, width, 3))
    store = canvas.create(path, width, height, 3, 512)
    store[:] = np.clip(pixels, 0, 255).astype(np.uint8)
    return store


def measure(args, result: dict) -> None:
    import torch

    from blkassist.gpu_memory import gib, refine_job_memory
    from blkassist.refine.jobs import allocate_stage, stage_plan
    from blkassist.refine.plan import SIZE_MULTIPLE, RefinePass
    from blkassist.refine.refiner import load_flux_refiner
    from blkassist.refine.windows import pass_noise, progress_for, refine_windows

    passes, mural = production(args.mural)
    refine = mural["settings"]
    tile = args.tile or refine.tile
    overlap = args.overlap or min(refine.overlap, tile // 4)
    per_forward = args.per_forward or refine.tiles_per_forward
    steps = args.steps or refine.steps
    quantize = refine.quantize and not args.no_quantize
    device = Clock(torch, args.device, cpu_memory=None)
    if device.cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        result["gpu"] = {"name": torch.cuda.get_device_name(0), "memory_gib": gib(total)}
        if args.memory_limit_gib:
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, args.memory_limit_gib * GIB / total)
            )
            result["gpu"]["limited_to_gib"] = args.memory_limit_gib
    result["settings"] = {
        "tile": tile, "overlap": overlap, "tiles_per_forward": per_forward,
        "steps": steps, "quantized": quantize, "max_sequence_length": refine.max_sequence_length,
        "tiles_per_job": refine.tiles_per_job, "lora_rank": None if args.no_lora else args.rank,
    }  # fmt: skip
    estimate = refine_job_memory(
        args.model, quantize=quantize, tile=tile, tiles_per_forward=per_forward,
        max_sequence_length=refine.max_sequence_length,
    )  # fmt: skip
    result["estimate_gib"] = {"job": gib(estimate["bytes"]),
                              **{k: gib(v) for k, v in estimate["stages"].items()}}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="gpu-refine-check-"))
    lora = (
        None if args.no_lora else random_lora(args.model, args.rank, work / "texture.safetensors")
    )

    device.sync()
    device.reset_peak()
    started = time.perf_counter()
    refiner = load_flux_refiner(
        args.model, args.device, quantize=quantize, lora=lora and str(lora), steps=steps,
        lora_scale=refine.lora_scale, prompt=refine.prompt, guidance=refine.guidance,
        max_sequence_length=refine.max_sequence_length,
    )  # fmt: skip
    device.sync()
    load_seconds = time.perf_counter() - started
    result["load"] = {"seconds": round(load_seconds, 1), "peak_gib": device.peak_gib(),
                      "held_after_gib": device.held_gib()}  # fmt: skip

    # One row of windows on the production grid, in real zarr stores.
    stride = (tile - overlap) // SIZE_MULTIPLE * SIZE_MULTIPLE
    width = tile + (max(args.windows, 3) - 1) * stride
    source = _canvas(work / "base.zarr", width, tile, 0)
    geometry = RefinePass(1, 1, False, width, tile, tile, overlap, 1, 1).geometry()
    allocate_stage(geometry, str(work / "base.zarr"), str(work / "base.zarr"),
                   str(work / "pass"), str(work / "pass.json"))  # fmt: skip
    record = json.loads((work / "pass.json").read_text())
    plan = stage_plan(record)
    import zarr

    store = zarr.open_array(record["windows"], mode="r+")
    device.reset_peak()
    report = refine_windows(
        plan.windows_between(0, plan.window_count), source, source, store, lambda: refiner,
        progress_for(record, 0), denoise=passes[0]["denoise"],
        noise=pass_noise(1, "bench", plan), anchor_strength=refine.anchor_strength,
        anchor_levels=refine.anchor_levels, tiles_per_forward=per_forward,
        device=str(refiner.components.device),
    )  # fmt: skip
    result["sample_peak_gib"] = device.peak_gib()
    groups = report.groups[1:] or report.groups  # the first group warms up
    stages = ("read", "refine", "anchor", "write")
    per_window = {s: statistics.median(g[s] / g["windows"] for g in groups) for s in stages}
    amortised = load_seconds / refine.tiles_per_job
    whole = sum(per_window.values()) + amortised
    result["per_window"] = {
        "seconds": round(whole, 3),
        "breakdown": {
            **{s: round(v, 4) for s, v in per_window.items()},
            "load_amortised": round(amortised, 3),
        },
        "samples": len(groups),
        "windows": plan.window_count,
        "seconds_per_group": [round(sum(g[s] for s in stages), 3) for g in report.groups],
    }
    rows, total = [], 0.0
    for entry in passes:
        hours = entry["windows"] * whole / 3600
        total += hours
        rows.append({**entry, "gpu_hours": round(hours, 2)})
    result["production"] = {
        "final": mural["final"],
        "passes": rows,
        "gpu_hours": round(total, 2),
        "gpus": args.gpus,
        "wall_hours": round(total / args.gpus, 2),
        "seconds_per_window": round(whole, 2),
        "note": "refinement tile jobs only (SR, blends, seam QA and the assembly are CPU "
        "or separate); set murals.NAME.refine.seconds_per_window to seconds_per_window",
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    result: dict = {"device": args.device, "model": args.model, "torch": torch.__version__}

    def measured() -> dict:
        try:
            measure(args, result)
        except Exception as error:  # report what failed; the figures so far still print
            result["error"] = f"{type(error).__name__}: {error}"
            result["traceback"] = traceback.format_exc()[-3000:]
            if torch.device(args.device).type == "cuda":
                result["peak_gib_at_error"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        return result

    return run_check(args, measured, lambda report: "error" in report)


if __name__ == "__main__":
    raise SystemExit(main())
