"""The diffusion path's figures: the whole cost of a refinement window and its breakdown
(tiny Flux, CPU: reads, Flux, anchoring, writes, the load amortised over a job), blend and
seam-QA throughput on a large canvas, peak RSS per job at two mural sizes (the real
workflow), the dry-run time of the 3 Gpx production diffusion mural, and the seam QA of the
demo diffusion mural (level steps and texture continuity; it builds the demo's texture
LoRA first, a few minutes). Prints; asserts nothing.

    .venv/bin/python bench/refine.py --quick          # small sizes, a few minutes
    .venv/bin/python bench/refine.py                  # defaults (longer)
    .venv/bin/python bench/refine.py --only blend --canvas-mpx 256
    .venv/bin/python bench/refine.py --only demo      # the demo mural's seam texture ratio
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips
import yaml
from _procwatch import print_table, run_watched

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV_BIN = ROOT / ".venv" / "bin"
DEFAULT_WORKDIR = ROOT / "bench" / "out"


def _textured_block(height: int, width: int, y0: int, x0: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
    rng = np.random.default_rng(seed)
    bands = [
        100 + 60 * np.sin(xx / (9 + 4 * b)) * np.cos(yy / (13 + b)) + rng.normal(0, 10, xx.shape)
        for b in range(3)
    ]
    return np.clip(np.stack(bands, axis=-1), 0, 255).astype(np.uint8)


def bench_tiles(args) -> None:
    """A real tile job's per-window cost on the CPU, through bench/gpu_refine_check.py (the
    production refinement settings, the tiny Flux in place of Flux.1-dev)."""
    import json
    from contextlib import redirect_stdout
    from io import StringIO

    import gpu_refine_check
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for tile in args.tiles:
        out = StringIO()
        with redirect_stdout(out):
            model = str(ROOT / "resources/flux/tiny.yaml")
            sizes = ["--tile", str(tile), "--windows", str(args.count), "--steps", str(args.steps)]
            gpu_refine_check.main(["--device", "cpu", "--model", model, *sizes])
        report = json.loads(out.getvalue())
        if "error" in report:
            print(f"tile {tile}: {report['error']}")
            continue
        window = report["per_window"]
        parts = window["breakdown"]
        rows.append([tile, window["samples"], args.steps, window["seconds"], parts["read"],
                     parts["refine"], parts["anchor"], parts["write"], parts["load_amortised"],
                     report["load"]["seconds"]])  # fmt: skip
    print_table(
        ["tile px", "samples", "evaluations", "s/window", "read", "Flux", "anchor", "write",
         "load/job", "load s"],
        rows,
        f"Per-window cost of a refinement tile job, tiny Flux on CPU ({args.threads} thread(s);"
        " median over forward groups; load amortised over tiles_per_job)",
    )  # fmt: skip


def bench_demo(args, workdir: Path) -> None:
    """Build the demo diffusion mural (config/config.yaml's mural_flux) in a scratch folder
    and print its seam QA: level steps and texture continuity per pass."""
    import json

    case = workdir / "demo"
    case.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV_BIN / "snakemake"), "results/mural_flux_final.tif", "-s",
           str(ROOT / "Snakefile"), "--directory", str(case), "--configfile",
           str(ROOT / "config" / "config.yaml"), "--cores", str(args.cores)]  # fmt: skip
    with open(case / "snakemake.log", "w") as log:
        watched = run_watched(
            cmd, env={**os.environ, "BLKASSIST_DEVICE": "cpu"}, stdout=log, stderr=log
        )
    if watched.returncode:
        print(f"the demo mural failed: see {case / 'snakemake.log'}")
        return
    report = json.loads((case / "results/mural_flux_seams.json").read_text())
    rows = [[p["pass"], "yes" if p["coherence"] else "", p["seam_count"], p["worst_score"],
             p["mean_score"], p["texture_ratio"], p["worst_texture"]]
            for p in report["passes"]]  # fmt: skip
    final = report["final"]
    print_table(
        ["pass", "coherence", "segments", "level step worst", "mean", "texture ratio",
         "texture lowest"],
        rows,
        f"Demo diffusion mural seam QA (texture ratio target >= 0.9): final canvas "
        f"{final['texture_ratio']} (lowest {final['worst_texture']} at "
        f"{final['worst_texture_at']}); built in {watched.wall_s:.0f} s",
    )  # fmt: skip


def bench_blend(args, workdir: Path) -> None:
    import zarr

    from blkassist import canvas
    from blkassist.refine import seams
    from blkassist.refine.blend import blend_blocks
    from blkassist.refine.jobs import allocate_stage, stage_plan
    from blkassist.refine.windows import read_window

    side = int((args.canvas_mpx * 1e6 / 12) ** 0.5)
    width, height = 4 * side, 3 * side
    base_path = workdir / "base.zarr"
    base = canvas.create(base_path, width, height, 3, 512)
    for y0 in range(0, height, 512):
        for x0 in range(0, width, 512):
            h, w = min(512, height - y0), min(512, width - x0)
            base[y0 : y0 + h, x0 : x0 + w] = _textured_block(h, w, y0, x0, y0 * 7 + x0)
    geometry = {
        "step": 1,
        "number": 1,
        "coherence": False,
        "width": width,
        "height": height,
        "tile": args.refine_tile,
        "overlap": args.overlap,
    }
    allocate_stage(
        geometry, str(base_path), str(base_path), str(workdir / "pass"), str(workdir / "pass.json")
    )
    import json

    record = json.loads((workdir / "pass.json").read_text())
    plan = stage_plan(record, 16, args.blocks_per_job)
    store = zarr.open_array(record["windows"], mode="r+")
    for window in plan.windows_between(0, plan.window_count):  # identity windows
        store[window.index] = read_window(base, window)
    target = canvas.open_canvas(record["canvas"], mode="r+")
    started = time.perf_counter()
    for blend in range(plan.blend_count):
        blend_blocks(plan, plan.blend_blocks(blend), store, target)
    blend_s = time.perf_counter() - started
    started = time.perf_counter()
    measured = seams.measure(plan, target, base)
    seams.thumbnail(target)
    qa_s = time.perf_counter() - started
    mpx = width * height / 1e6
    print_table(
        ["canvas", "Mpx", "windows", "blend jobs", "blend s", "blend Mpx/s", "QA s",
         "QA Mpx/s", "seams"],
        [[f"{width}x{height}", mpx, plan.window_count, plan.blend_count, blend_s, mpx / blend_s,
          qa_s, mpx / qa_s, measured["seam_count"]]],
        f"Blend and seam QA (tile {args.refine_tile}, overlap {args.overlap}; one process, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB incl. setup)",
    )  # fmt: skip


def _workflow_config(source: str, args) -> dict:
    return {
        "murals": {
            "bench": {
                "source": source,
                "scale": 2,
                "model": "lanczos",
                "tile": 256,
                "path": "diffusion",
                "refine": {
                    "model": str(ROOT / "resources/flux/tiny.yaml"),
                    "tile": args.refine_tile,
                    "overlap": args.overlap,
                    "passes": [{"denoise": 0.3}],
                    "coherence": {"denoise": 0.12},
                    "steps": 3,
                    "max_sequence_length": 32,
                    "tiles_per_job": args.tiles_per_job,
                    "blocks_per_job": args.blocks_per_job,
                },
            }
        }
    }


def bench_rss(args, workdir: Path) -> None:
    rows, by_rule = [], {}
    for size in args.rss_sizes:
        width, height = (int(v) for v in size.split("x"))
        case = workdir / f"rss-{size}"
        case.mkdir(parents=True, exist_ok=True)
        image = np.concatenate(
            [_textured_block(min(512, height - y), width, y, 0, y) for y in range(0, height, 512)]
        )
        pyvips.Image.new_from_array(image).write_to_file(str(case / "art.png"))
        (case / "config.yaml").write_text(yaml.safe_dump(_workflow_config("art.png", args)))
        cmd = [str(VENV_BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(case),
               "--configfile", str(case / "config.yaml"), "--cores", str(args.cores)]  # fmt: skip
        log = open(case / "snakemake.log", "w")  # noqa: SIM115
        watched = run_watched(
            cmd, env={**os.environ, "BLKASSIST_DEVICE": "cpu"}, stdout=log, stderr=log
        )
        log.close()
        if watched.returncode:
            print(f"workflow failed at {size}: see {case / 'snakemake.log'}")
            continue
        rows.append([size, f"{2 * width}x{2 * height}", watched.wall_s, watched.desc_peak_mb,
                     watched.desc_peak_label, watched.other_cpu_s])  # fmt: skip
        for label, peak in watched.peaks_by_label.items():
            if label.startswith("rule "):
                by_rule.setdefault(label[5:], {})[size] = peak
    print_table(
        ["source", "canvas", "wall s", "largest job MB", "largest job", "other CPU-s"],
        rows,
        "Real workflow, tiny Flux (one pass + coherence): peak RSS of the largest single job",
    )
    sizes = args.rss_sizes
    print_table(
        ["rule", *[f"peak MB @ {s}" for s in sizes]],
        [[rule, *[peaks.get(s, "-") for s in sizes]] for rule, peaks in sorted(by_rule.items())],
        "Peak RSS per rule at each size (flat across sizes = independent of the mural)",
    )


def bench_dryrun(args, workdir: Path) -> None:
    case = workdir / "dryrun"
    (case / "scans").mkdir(parents=True, exist_ok=True)
    source = case / "scans" / "mural_master.tif"
    pyvips.Image.black(16000, 12000, bands=3).write_to_file(
        str(source), tile=True, compression="deflate"
    )
    (case / "models/FLUX.1-dev").mkdir(parents=True, exist_ok=True)
    (case / "work/models").mkdir(parents=True, exist_ok=True)
    (case / "work/models/texture-studio.safetensors").touch()
    production = yaml.safe_load((ROOT / "config/production.yaml").read_text())
    for mural in production["murals"].values():
        mural["source"] = str(source)
    (case / "production.yaml").write_text(yaml.safe_dump(production))
    cmd = [str(VENV_BIN / "snakemake"), "results/mural_flux_final.tif",
           "-s", str(ROOT / "Snakefile"), "--directory", str(case),
           "--configfile", str(case / "production.yaml"), "-n",
           "--cores", "24", "--resources", "gpu=4"]  # fmt: skip
    rows = []
    for _ in range(args.repeat):
        with tempfile.TemporaryFile("w+") as out:
            watched = run_watched(cmd, stdout=out, stderr=out)
            out.seek(0)
            text = out.read()
        jobs = re.search(r"^total\s+(\d+)$", text, re.M)
        tiles = re.search(r"^refine_tile_batch\s+(\d+)$", text, re.M)
        rows.append([watched.wall_s, watched.root_peak_mb, jobs[1] if jobs else "?",
                     tiles[1] if tiles else "?", watched.other_cpu_s])  # fmt: skip
    print_table(
        ["wall s", "snakemake MB", "jobs", "refine tile jobs", "other CPU-s"],
        rows,
        "Dry run of the 3 Gpx diffusion mural (config/production.yaml mural_flux, target < 15 s)",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    parser.add_argument("--only", choices=["tiles", "blend", "rss", "dryrun", "demo"], nargs="+")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--count", type=int, default=9, help="windows per tile job measured")
    parser.add_argument("--steps", type=int, default=20, help="model evaluations a window")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--canvas-mpx", type=float, default=64.0)
    parser.add_argument("--refine-tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--tiles-per-job", type=int, default=32)
    parser.add_argument("--blocks-per-job", type=int, default=16)
    parser.add_argument("--rss-sizes", nargs=2, default=["320x240", "960x720"])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tiles, args.count, args.steps, args.canvas_mpx = [64, 128], 5, 4, 4.0
        args.refine_tile, args.overlap = 128, 16
        args.rss_sizes, args.repeat = ["80x60", "160x120"], 1
    global VENV_BIN
    if not (VENV_BIN / "snakemake").exists():
        VENV_BIN = Path(sys.executable).parent
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="refine-", dir=args.workdir))
    try:
        for part in args.only or ["tiles", "blend", "rss", "dryrun", "demo"]:
            if part == "tiles":
                bench_tiles(args)
            elif part == "demo":
                bench_demo(args, workdir)
            elif part == "blend":
                bench_blend(args, workdir)
            elif part == "rss":
                bench_rss(args, workdir)
            else:
                bench_dryrun(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
