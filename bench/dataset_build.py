"""Corpus -> captions -> training set at scale: time and peak memory of each step.

A collection of N scans (default 100 JPEGs of 4000x3000, pen-and-ink-like line patterns
and paper noise made by libvips) goes through the real workflow: normalise_collection,
caption_collection (the built-in captioner) and build_dataset with the default recipe
(buckets 512/768/1024, 25% detail crops, mirrored copies, 10% validation).

    .venv/bin/python bench/dataset_build.py [--images 100] [--size 4000x3000] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
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


def synthesize_scan(path: Path, width: int, height: int, seed: int) -> None:
    """Ink lines (thresholded sines at a per-scan angle and pitch) on grainy warm paper."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    angle = (seed * 37) % 180
    pitch = 9 + seed % 13
    across = x * ((angle * 3.14159 / 180) % 1.0) + y
    lines = ((across * (360 / pitch)).sin() > 0.85).ifthenelse(0, 1)
    contour = (((x - width / 2) ** 2 + (y - height / 3) ** 2) ** 0.5 * (360 / 41)).sin() > 0.93
    ink = lines * contour.ifthenelse(0, 1)
    paper = pyvips.Image.gaussnoise(width, height, sigma=6, seed=seed) + 232
    gray = paper * ink + (1 - ink) * 30
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
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--quick", action="store_true", help="10 scans of 1600x1200")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size = 10, "1600x1200"
    width, height = map(int, args.size.split("x"))
    OUT.mkdir(parents=True, exist_ok=True)
    case = Path(tempfile.mkdtemp(prefix="dataset-", dir=OUT))
    scans = case / "scans" / "drawings"
    scans.mkdir(parents=True)
    started = time.perf_counter()
    for index in range(args.images):
        synthesize_scan(scans / f"scan-{index:03d}.jpg", width, height, seed=index)
    made = time.perf_counter() - started
    config = {
        "corpus": {"collections": {"bench": {"path": "scans", "artist": "bench",
                                             "licence": "CC0-1.0", "consent": True}}},
        "datasets": {"bench": {"collections": ["bench"]}},
    }  # fmt: skip
    (case / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        str(REPO / ".venv" / "bin" / "snakemake"), "-s", str(REPO / "Snakefile"),
        "--directory", str(case), "--configfile", str(case / "config.yaml"),
        "--cores", "2", "datasets/bench",
    ]  # fmt: skip
    with open(case / "snakemake.log", "w") as log:
        watched = run_watched(command, cwd=case, stdout=log, stderr=log)
    if watched.returncode != 0:
        print((case / "snakemake.log").read_text()[-4000:], file=sys.stderr)
        return 1
    jobs = read_benchmarks(case)
    summary = json.loads((case / "datasets" / "bench" / "dataset.json").read_text())
    files = sum(1 for _ in (case / "datasets" / "bench").rglob("*.png"))
    print(f"{args.images} scans of {width}x{height} JPEG (made in {made:.1f} s); "
          f"{files} training images written")  # fmt: skip
    steps = [
        ("normalise_collection", "normalise_bench"),
        ("caption_collection", "caption_bench"),
        ("build_dataset", "bench"),
    ]
    print_table(
        ["rule", "wall s", "peak RSS MB (polled)", "max_rss MB (snakemake)"],
        [
            [rule, jobs[key]["s"], watched.peaks_by_label.get(f"rule {rule}", float("nan")),
             jobs[key]["max_rss"]]
            for rule, key in steps
        ],
        title=f"whole run: {watched.wall_s:.1f} s wall, other CPU load {watched.other_cpu_s:.0f} s",
    )  # fmt: skip
    print("dataset counts:", summary["counts"], "detail share:", summary["detail_share"])
    if not args.keep:
        shutil.rmtree(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
