"""Texture crop selection at scale: crops selected per second and peak memory.

A collection of N scans (default 100 JPEGs of 3000x2250) made by libvips, each with four
regions of different mark-making (hatching at a per-scan angle, cross-hatching, stippling,
curving contour strokes) on grainy warm paper, goes through the real workflow:
normalise_collection, then select_texture_crops with the schema's defaults (1024/1280/1536
px crops on a 32 px grid, 1000 crops, overlap <= 0.25).

Reported: the selection time (measuring every scan and choosing; from the rule's log),
crops selected per second, the time to write the crop PNGs, and the peak RSS of the job
(polled, and Snakemake's benchmark max_rss).

    python bench/texture_crops.py [--images 100] [--size 3000x2250] [--count 1000]
        [--crop-sizes 1024 1280 1536] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyvips
import yaml
from _procwatch import print_table, run_watched

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _lines(x, y, angle: float, pitch: float) -> pyvips.Image:
    t = math.radians(angle)
    across = x * -math.sin(t) + y * math.cos(t)
    return (across * (360 / pitch)).sin() > 0.8


def synthesize_scan(path: Path, width: int, height: int, seed: int) -> None:
    """Four regions of mark-making (their places vary per scan) on grainy warm paper."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    angle, pitch = (seed * 37) % 180, 9 + seed % 7
    hatch = _lines(x, y, angle, pitch)
    cross = _lines(x, y, angle + 20, pitch) | _lines(x, y, angle + 100, pitch)
    noise = pyvips.Image.gaussnoise(width, height, sigma=1, mean=0, seed=seed)
    stipple = noise.gaussblur(1.5) > 0.4
    radius = ((x - width * 0.3) ** 2 + (y - height * 0.6) ** 2) ** 0.5
    strokes = (radius * (360 / (pitch + 4))).sin() > 0.85
    left, top = x < width // 2, y < height // 2
    layout = [hatch, cross, stipple, strokes]
    shift = seed % 4
    layout = layout[shift:] + layout[:shift]
    ink = (left & top).ifthenelse(layout[0], (~left & top).ifthenelse(
        layout[1], (left & ~top).ifthenelse(layout[2], layout[3])))  # fmt: skip
    paper = pyvips.Image.gaussnoise(width, height, sigma=5, mean=232, seed=seed + 1)
    gray = (ink > 0).ifthenelse(30, paper)
    rgb = gray.bandjoin([gray - 6, gray - 16]).cast("uchar").copy(interpretation="srgb")
    rgb.jpegsave(str(path), Q=92)


def read_benchmarks(case: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((case / "benchmarks").rglob("*.tsv")):
        with open(path) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        rows[path.stem] = {"s": float(record["s"]), "max_rss": record["max_rss"]}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", default="3000x2250")
    parser.add_argument("--count", type=int, default=1000, help="crops to select")
    parser.add_argument("--crop-sizes", type=int, nargs="+", help="default: the schema's")
    parser.add_argument(
        "--quick", action="store_true", help="10 scans of 1600x1200, 256/384 px crops"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.crop_sizes = 10, "1600x1200", [256, 384]
    width, height = map(int, args.size.split("x"))
    OUT.mkdir(parents=True, exist_ok=True)
    case = Path(tempfile.mkdtemp(prefix="texture-", dir=OUT))
    scans = case / "scans"
    scans.mkdir(parents=True)
    started = time.perf_counter()
    for index in range(args.images):
        synthesize_scan(scans / f"scan-{index:03d}.jpg", width, height, seed=index)
    made = time.perf_counter() - started
    config = {
        "corpus": {"collections": {"bench": {"path": "scans", "artist": "bench",
                                             "licence": "CC0-1.0", "consent": True}}},
        "texture": {"runs": {"bench": {"collections": ["bench"],
                                       "dataset": {"count": args.count, "min_count": 0}}}},
    }  # fmt: skip
    if args.crop_sizes:
        config["texture"]["runs"]["bench"]["dataset"]["crop_sizes"] = args.crop_sizes
    (case / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(case),
        "--configfile", str(case / "config.yaml"), "--cores", "2",
        "work/texture/bench/crops.json",
    ]  # fmt: skip
    with open(case / "snakemake.log", "w") as log:
        watched = run_watched(command, cwd=case, stdout=log, stderr=log)
    if watched.returncode != 0:
        print((case / "snakemake.log").read_text()[-4000:], file=sys.stderr)
        return 1
    jobs = read_benchmarks(case)
    log_text = (case / "logs" / "texture" / "select_bench.log").read_text()
    selected = re.search(r"-> (\d+) crops .* in ([\d.]+) s", log_text)
    written = re.search(r"wrote \d+ crops to .* in ([\d.]+) s", log_text)
    crops, select_s = int(selected.group(1)), float(selected.group(2))
    write_s = float(written.group(1)) - select_s
    plan = json.loads((case / "work" / "texture" / "bench" / "crops.json").read_text())
    print(f"{args.images} scans of {width}x{height} JPEG (made in {made:.1f} s); "
          f"{crops} crops selected {plan['counts']}")  # fmt: skip
    print_table(
        ["step", "wall s", "crops/s", "peak RSS MB (polled)", "max_rss MB (snakemake)"],
        [
            ["normalise_collection", jobs["normalise_bench"]["s"], "",
             watched.peaks_by_label.get("rule normalise_collection", float("nan")),
             jobs["normalise_bench"]["max_rss"]],
            ["select (measure + choose)", select_s, crops / max(select_s, 1e-9), "", ""],
            ["write crop PNGs", write_s, crops / max(write_s, 1e-9), "", ""],
            ["select_texture_crops (job)", jobs["select_bench"]["s"], "",
             watched.peaks_by_label.get("rule select_texture_crops", float("nan")),
             jobs["select_bench"]["max_rss"]],
        ],
        title=f"whole run: {watched.wall_s:.1f} s wall, other CPU load {watched.other_cpu_s:.0f} s",
    )  # fmt: skip
    if not args.keep:
        shutil.rmtree(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
