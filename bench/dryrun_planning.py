"""Cost of planning the production mural: time and memory of `snakemake -n`.

config/production.yaml describes a 16000x12000 scan enlarged 4x (3.07 Gpx). Planning
reads the source's header, so a cheap 16000x12000 RGB tiled TIFF (black, deflate: a few
MB) stands in for scans/mural_master.tif in a temporary case folder, and a copy of
production.yaml points at it. Figures are printed; nothing is asserted.

    .venv/bin/python bench/dryrun_planning.py                       # tiles_per_job 16
    .venv/bin/python bench/dryrun_planning.py --tiles-per-job 16 1  # also one-tile jobs
    .venv/bin/python bench/dryrun_planning.py --quick               # 4000x3000 source
    .venv/bin/python bench/dryrun_planning.py --mural mural_flux    # the diffusion path
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyvips
import yaml
from _procwatch import print_table, run_watched

from blkassist.tiling import plan_mural

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PRODUCTION = ROOT / "config" / "production.yaml"
TARGET_S = 15.0


def make_source(path: Path, width: int, height: int) -> None:
    """A black RGB tiled TIFF: only its header matters to planning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pyvips.Image.black(width, height, bands=3).copy(interpretation="srgb")
    image.tiffsave(str(path), tile=True, tile_width=256, tile_height=256, compression="deflate")


def parse_job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats:' table of Snakemake's output as {rule: count}."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return {}
    counts: dict[str, int] = {}
    for line in lines[start + 1 :]:
        words = line.split()
        if not words:
            break
        if len(words) == 2 and words[1].isdigit():
            counts[words[0]] = int(words[1])
            if words[0] == "total":
                break
    return counts


def run_variant(tiles_per_job: int, source: Path, workdir: Path, args) -> dict:
    config = yaml.safe_load(PRODUCTION.read_text())
    name = args.mural
    config["murals"] = {name: config["murals"][name]}  # plan only the mural asked for
    config["murals"][name]["source"] = str(source)
    config["murals"][name]["tiles_per_job"] = tiles_per_job
    mural = config["murals"][name]
    plan = plan_mural(
        args.width,
        args.height,
        scale=mural.get("scale", 4),
        tile=mural.get("tile", 512),
        tiles_per_job=tiles_per_job,
    )
    expected = sum(p.batch_count for p in plan.passes)
    walls, peaks, kernels, others = [], [], [], []
    counts: dict[str, int] = {}
    for repeat in range(args.repeat):
        case = Path(tempfile.mkdtemp(prefix=f"dryrun-tpj{tiles_per_job}-", dir=workdir))
        try:
            refine = mural.get("refine")
            if refine:  # stand-ins for the weights a studio would have (planning reads none)
                (case / refine["model"]).mkdir(parents=True)
                if refine.get("lora", "").startswith("texture:"):
                    run = refine["lora"].split(":", 1)[1]
                    lora = case / "work" / "models" / f"texture-{run}.safetensors"
                    lora.parent.mkdir(parents=True)
                    lora.touch()
            config_path = case / "production.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            # The target goes first: --resources takes several values and would swallow it.
            cmd = [
                str(VENV_BIN / "snakemake"),
                f"results/{name}_final.tif",
                "-s",
                str(ROOT / "Snakefile"),
                "--directory",
                str(case),
                "--configfile",
                str(config_path),
                "-n",
                "--cores",
                str(args.cores),
                "--resources",
                f"gpu={args.gpus}",
            ]
            log = case / "snakemake.log"
            with open(log, "w") as handle:
                watched = run_watched(
                    cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, interval=args.interval
                )
            text = log.read_text(errors="replace")
            if watched.returncode != 0:
                print(f"snakemake -n FAILED (exit {watched.returncode}):")
                print("\n".join(text.splitlines()[-40:]))
                return {"tiles_per_job": tiles_per_job, "failed": True}
            counts = parse_job_stats(text)
            for line in text.splitlines():
                if line.startswith(f"mural {name}:") and repeat == 0:
                    print(f"plan line: {line}", flush=True)
            walls.append(watched.wall_s)
            others.append(watched.other_cpu_s)
            peaks.append(watched.root_peak_mb)
            kernels.append(watched.kernel_maxrss_mb)
            print(
                f"tiles_per_job {tiles_per_job}, run {repeat + 1}: {watched.wall_s:.1f} s, "
                f"peak RSS {watched.kernel_maxrss_mb:.0f} MB, "
                f"{counts.get('upscale_tile_batch', 0)} upscale_tile_batch jobs, "
                f"other CPU-s meanwhile {watched.other_cpu_s:.1f}",
                flush=True,
            )
        finally:
            if not args.keep:
                shutil.rmtree(case, ignore_errors=True)
    return {
        "tiles_per_job": tiles_per_job,
        "failed": False,
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "poll_peak_mb": max(peaks),
        "kernel_peak_mb": max(kernels),
        "other_cpu_s": max(others),
        "counts": counts,
        "expected_batches": expected,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles-per-job", type=int, nargs="+", default=[16])
    parser.add_argument(
        "--mural",
        choices=sorted(yaml.safe_load(PRODUCTION.read_text())["murals"]),
        default="mural",
        help="production mural to plan: mural (SR path) or mural_flux (diffusion path)",
    )
    parser.add_argument("--width", type=int, default=16000, help="stand-in source width")
    parser.add_argument("--height", type=int, default=12000, help="stand-in source height")
    parser.add_argument("--quick", action="store_true", help="4000x3000 source")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median)")
    parser.add_argument("--cores", type=int, default=24)
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.1, help="RSS polling interval, s")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.height = 4000, 3000
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="dryrun-source-", dir=args.workdir))
    try:
        source = scratch / "scans" / "mural_master.tif"
        started = time.perf_counter()
        make_source(source, args.width, args.height)
        print(
            f"stand-in source {args.width}x{args.height}: {source.stat().st_size / 1e3:.0f} kB "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        results = [run_variant(n, source, args.workdir, args) for n in args.tiles_per_job]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    done = [r for r in results if not r["failed"]]
    out_gpx = args.width * args.height * 16 / 1e9
    print_table(
        [
            "tiles/job",
            "wall s (median)",
            "wall s (min)",
            "peak RSS MB (kernel)",
            "peak RSS MB (poll)",
            "batch jobs",
            "expected",
            "total jobs",
            "other CPU-s",
            f"target <= {TARGET_S:.0f} s",
        ],
        [
            [
                r["tiles_per_job"],
                r["wall_s"],
                r["wall_min_s"],
                r["kernel_peak_mb"],
                r["poll_peak_mb"],
                r["counts"].get("upscale_tile_batch", 0),
                r["expected_batches"],
                r["counts"].get("total", 0),
                r["other_cpu_s"],
                "ok" if r["wall_s"] <= TARGET_S else "OVER",
            ]
            for r in done
        ],
        title=(
            f"snakemake -n for production.yaml's {args.mural} ({args.width}x{args.height} -> "
            f"{out_gpx:.2f} Gpx), --cores {args.cores} --resources gpu={args.gpus}, "
            f"{args.repeat} run(s) each"
        ),
    )
    for r in done:
        print_table(
            ["job", "count"],
            [[rule, count] for rule, count in r["counts"].items()],
            title=f"Job stats, tiles_per_job {r['tiles_per_job']}",
        )
    return 1 if len(done) != len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
