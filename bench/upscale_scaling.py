"""How the upscale workflow scales with mural size: wall time, throughput, peak memory.

For each output size (gigapixels) a synthetic, not trivially compressible 4:3 source of
size/16 pixels is streamed to a tiled TIFF by libvips, a one-mural config (model lanczos,
scale 4) is written, and the real workflow builds results/bench_final.tif in a case
folder. Then libvips' own streaming resize of the same source to an equivalent pyramidal
BigTIFF is timed as the reference. Figures are printed; nothing is asserted.

    .venv/bin/python bench/upscale_scaling.py              # 0.1, 0.4 and 1.0 Gpx
    .venv/bin/python bench/upscale_scaling.py --quick      # 0.01 and 0.04 Gpx
    .venv/bin/python bench/upscale_scaling.py --gpx 0.2 0.5 --keep
    .venv/bin/python bench/upscale_scaling.py --source 5000x4000    # the issue-8 comparison

Each size runs on two contents (`--content`): `lineart` (thin dark contours on paper:
compressible, what this project upscales) and `noise` (gradients plus Gaussian noise:
incompressible). The last lines print ours/pyvips per content; the target is <= 2.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyvips
import yaml
from _procwatch import print_table, run_watched

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DEFAULT_WORKDIR = ROOT / "bench" / "out"
SCALE = 4
RSS_TARGET_MB = 1024

PYVIPS_REFERENCE = """
import sys, pyvips
src, out = sys.argv[1], sys.argv[2]
image = pyvips.Image.new_from_file(src, access="sequential").resize(4, kernel="lanczos3")
image.tiffsave(out, tile=True, tile_width=256, tile_height=256, pyramid=True, bigtiff=True,
               compression="deflate", predictor="horizontal")
"""


def source_size(output_gpx: float) -> tuple[int, int]:
    """(width, height) of a 4:3 source that a 4x enlargement turns into `output_gpx`."""
    pixels = output_gpx * 1e9 / SCALE**2
    width = round(math.sqrt(pixels * 4 / 3))
    return width, round(width * 3 / 4)


def synthesize_source(path: Path, width: int, height: int, seed: int) -> None:
    """Gradients, sines, rings and Gaussian noise, computed and written tile by tile."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    radius = (x * x + y * y) ** 0.5
    red = (x * (360 / 97)).sin() * 50 + (y * (360 / 211)).sin() * 30 + 128
    green = ((x + y) * (360 / 53)).sin() * 40 + x * (100.0 / width) + 80
    blue = (radius * (360 / 71)).sin() * 60 + y * (80.0 / height) + 90
    noise = [pyvips.Image.gaussnoise(width, height, sigma=18, seed=seed + i) for i in range(3)]
    image = red.bandjoin([green, blue]) + noise[0].bandjoin(noise[1:])
    image = image.cast("uchar").copy(interpretation="srgb")  # cast clips to 0..255
    image.tiffsave(
        str(path),
        tile=True,
        tile_width=256,
        tile_height=256,
        compression="deflate",
        predictor="horizontal",
        bigtiff=width * height * 3 > 3_500_000_000,
    )


def synthesize_lineart(path: Path, width: int, height: int, seed: int) -> None:
    """Pen-and-ink-like content: thin dark contour lines on white paper, computed lazily."""
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0] + seed * 37, xyz[1]
    field = (x * (360 / 181)).sin() + (y * (360 / 233)).sin() + ((x + y) * (360 / 97)).sin()
    contour = ((field * 6).sin().abs() < 0.12).ifthenelse(25, 245)  # ~8% ink
    image = contour.cast("uchar").bandjoin([contour.cast("uchar")] * 2)
    image.copy(interpretation="srgb").tiffsave(
        str(path),
        tile=True,
        tile_width=256,
        tile_height=256,
        compression="deflate",
        predictor="horizontal",
        bigtiff=width * height * 3 > 3_500_000_000,
    )


def write_config(case: Path, args) -> Path:
    config = {
        "models": {"dir": "work/models"},
        "gpu": {"lock_dir": str(case / "gpu-locks")},
        "murals": {
            "bench": {
                "source": "source.tif",
                "model": "lanczos",
                "path": "sr",  # auto would add diffusion refinement past 8192 px
                "scale": SCALE,
                "tile": args.tile,
                "pad": args.pad,
                "tiles_per_job": args.tiles_per_job,
            }
        },
    }
    path = case / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rule_of_benchmark(path: Path) -> str:
    name = path.stem
    if name.startswith(("batch-", "tiles-")):
        return "upscale_tile_batch"
    return re.sub(r"\d+$", "", name)  # allocate_canvas1 -> allocate_canvas


def read_benchmarks(case: Path) -> list[dict]:
    """One row per job from Snakemake's benchmark TSVs: rule, seconds, max_rss (MB)."""
    rows = []
    for path in sorted((case / "benchmarks").rglob("*.tsv")):
        with open(path) as handle:
            for record in csv.DictReader(handle, delimiter="\t"):
                rss = record.get("max_rss", "NA")
                rows.append(
                    {
                        "rule": rule_of_benchmark(path),
                        "job": str(path.relative_to(case / "benchmarks")),
                        "s": float(record["s"]),
                        "max_rss": float(rss) if rss not in ("NA", "", "-") else float("nan"),
                    }
                )
    return rows


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_case(gpx: float, args, workdir: Path, content: str = "noise", size=None) -> dict:
    width, height = size or source_size(gpx)
    out_w, out_h = width * SCALE, height * SCALE
    case = Path(tempfile.mkdtemp(prefix=f"upscale-{content}-{gpx:g}gpx-", dir=workdir))
    print(
        f"\n=== {content}: source {width}x{height} -> {out_w}x{out_h} "
        f"({out_w * out_h / 1e9:.3f} Gpx); case folder {case}",
        flush=True,
    )
    free = shutil.disk_usage(case).free
    need = out_w * out_h * 3 * 4  # canvas + plain TIFF + result + reference, roughly
    if free < need:
        print(f"WARNING: {free / 1e9:.0f} GB free, this case may need ~{need / 1e9:.0f} GB")
    try:
        started = time.perf_counter()
        source = case / "source.tif"
        draw = synthesize_lineart if content == "lineart" else synthesize_source
        draw(source, width, height, args.seed)
        print(
            f"source written in {time.perf_counter() - started:.1f} s "
            f"({source.stat().st_size / 1e6:.0f} MB)",
            flush=True,
        )
        config = write_config(case, args)
        cmd = [
            str(VENV_BIN / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(case),
            "--configfile",
            str(config),
            "--cores",
            str(args.cores),
            "results/bench_final.tif",
        ]
        log = case / "snakemake.log"
        with open(log, "w") as handle:
            ours = run_watched(
                cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, interval=args.interval
            )
        if ours.returncode != 0:
            print(f"snakemake FAILED (exit {ours.returncode}); last lines of {log}:")
            print(tail(log))
            return {"gpx": gpx, "content": content, "failed": True}
        result = case / "results" / "bench_final.tif"
        header = pyvips.Image.new_from_file(str(result))
        jobs = read_benchmarks(case)
        print(
            f"ours: {ours.wall_s:.1f} s, result {header.width}x{header.height} "
            f"{result.stat().st_size / 1e6:.0f} MB, {len(jobs)} benchmarked jobs",
            flush=True,
        )
        reference_out = case / "pyvips_reference.tif"
        reference = run_watched(
            [str(VENV_BIN / "python"), "-c", PYVIPS_REFERENCE, str(source), str(reference_out)],
            cwd=case,
            interval=args.interval,
        )
        if reference.returncode != 0:
            print(f"pyvips reference FAILED (exit {reference.returncode})")
        ref_size = reference_out.stat().st_size / 1e6 if reference_out.exists() else float("nan")
        print(f"pyvips: {reference.wall_s:.1f} s, result {ref_size:.0f} MB", flush=True)
        return {
            "gpx": out_w * out_h / 1e9,
            "content": content,
            "failed": False,
            "ours": ours,
            "pyvips": reference,
            "jobs": jobs,
            "result_mb": result.stat().st_size / 1e6,
            "reference_mb": ref_size,
            "size_ok": (header.width, header.height) == (out_w, out_h),
        }
    finally:
        if args.keep:
            print(f"kept {case}")
        else:
            shutil.rmtree(case, ignore_errors=True)


def rule_peak(case: dict, rule: str) -> float:
    benchmarked = [job["max_rss"] for job in case["jobs"] if job["rule"] == rule]
    polled = case["ours"].peaks_by_label.get(f"rule {rule}", 0.0)
    return max([*benchmarked, polled])


def report(cases: list[dict]) -> None:
    done = [c for c in cases if not c["failed"]]
    rows = []
    for case in done:
        ours, ref, jobs = case["ours"], case["pyvips"], case["jobs"]
        largest = max(jobs, key=lambda j: j["max_rss"]) if jobs else None
        rows.append(
            [
                round(case["gpx"], 3),
                ours.wall_s,
                case["gpx"] * 1000 / ours.wall_s,
                largest["max_rss"] if largest else float("nan"),
                largest["rule"] if largest else "-",
                ours.desc_peak_mb,
                ours.desc_peak_label.removeprefix("rule "),
                ref.wall_s,
                ref.desc_peak_mb if ref.desc_peak_mb else ref.root_peak_mb,
                ours.wall_s / ref.wall_s,
            ]
        )
    print_table(
        [
            "out Gpx",
            "ours s",
            "ours Mpx/s",
            "job RSS MB (bench)",
            "rule (bench)",
            "job RSS MB (poll)",
            "rule (poll)",
            "pyvips s",
            "pyvips RSS MB",
            "ours/pyvips",
        ],
        rows,
        title="Upscale workflow vs libvips streaming resize (RSS = largest single job)",
    )
    # pyvips runs as the watched root process itself; the kernel figure is exact for it.
    rows = [
        [
            round(c["gpx"], 3),
            c["ours"].kernel_maxrss_mb,
            c["ours"].root_peak_mb,
            c["ours"].tree_total_peak_mb,
            c["pyvips"].kernel_maxrss_mb,
            c["result_mb"],
            c["reference_mb"],
            "yes" if c["size_ok"] else "NO",
            c["ours"].other_cpu_s,
            c["pyvips"].other_cpu_s,
        ]
        for c in done
    ]
    print_table(
        [
            "out Gpx",
            "ours kernel maxrss MB",
            "snakemake main MB",
            "ours tree sum MB",
            "pyvips kernel maxrss MB",
            "ours file MB",
            "pyvips file MB",
            "size ok",
            "other CPU-s (ours)",
            "other CPU-s (pyvips)",
        ],
        rows,
        title="Cross-checks (kernel maxrss = largest single process incl. snakemake itself)",
    )
    print(
        "(other CPU-s: CPU time the machine spent on processes outside the run meanwhile; "
        "well above 0 means the wall times are inflated by other work)"
    )
    rows = []
    for case in done:
        by_rule = defaultdict(list)
        for job in case["jobs"]:
            by_rule[job["rule"]].append(job)
        polled = case["ours"].peaks_by_label
        for rule, jobs in by_rule.items():
            rows.append(
                [
                    round(case["gpx"], 3),
                    rule,
                    len(jobs),
                    sum(j["s"] for j in jobs),
                    max(j["s"] for j in jobs),
                    max(j["max_rss"] for j in jobs),
                    polled.get(f"rule {rule}", float("nan")),
                ]
            )
    print_table(
        ["out Gpx", "rule", "jobs", "sum s", "max s", "max RSS MB (bench)", "max RSS MB (poll)"],
        rows,
        title="Per rule (from benchmarks/*.tsv and polling)",
    )
    if done:
        rules = sorted({job["rule"] for case in done for job in case["jobs"]})
        rows = []
        for rule in rules:
            peaks = [rule_peak(case, rule) for case in done]
            rows.append([rule, *peaks, peaks[-1] / peaks[0] if peaks[0] else float("nan")])
        print_table(
            ["rule", *[f"{c['gpx']:.3f} Gpx" for c in done], "last/first"],
            rows,
            title="Peak RSS MB per rule across sizes (max of benchmark TSV and polling)",
        )
    print("\nTargets: largest-job peak RSS <= 1 GB and flat across sizes; wall <= 2x pyvips.")
    for case in done:
        jobs = case["jobs"]
        peak = max([j["max_rss"] for j in jobs] + [case["ours"].desc_peak_mb])
        ratio = case["ours"].wall_s / case["pyvips"].wall_s
        print(
            f"  {case['gpx']:.3f} Gpx: peak job RSS {peak:.0f} MB "
            f"[{'ok' if peak <= RSS_TARGET_MB else 'OVER'}], "
            f"wall {ratio:.2f}x pyvips [{'ok' if ratio <= 2 else 'OVER'}]"
        )
    if len(done) >= 2:
        peaks = [max([j["max_rss"] for j in c["jobs"]] + [c["ours"].desc_peak_mb]) for c in done]
        print(
            f"  flatness: peak at {done[-1]['gpx']:.3f} Gpx / peak at {done[0]['gpx']:.3f} Gpx "
            f"= {peaks[-1] / peaks[0]:.2f} (size ratio {done[-1]['gpx'] / done[0]['gpx']:.0f}x)"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpx", type=float, nargs="+", default=[0.1, 0.4, 1.0], help="output sizes, Gpx"
    )
    parser.add_argument("--quick", action="store_true", help="sanity run: 0.01 and 0.04 Gpx")
    parser.add_argument(
        "--content", nargs="+", choices=["lineart", "noise"], default=["lineart", "noise"]
    )
    parser.add_argument(
        "--source", help="one exact source size WxH instead of --gpx (e.g. 5000x4000)"
    )
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--pad", type=int, default=32)
    parser.add_argument("--tiles-per-job", type=int, default=16)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.2, help="RSS polling interval, s")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    args = parser.parse_args(argv)
    sizes = [0.01, 0.04] if args.quick else args.gpx
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.source:
        size = tuple(int(v) for v in args.source.lower().split("x"))
        sizes = [size[0] * size[1] * SCALE**2 / 1e9]
    else:
        size = None
    print(
        f"upscale_scaling: sizes {[round(gpx, 3) for gpx in sizes]} Gpx, tile {args.tile}, "
        f"pad {args.pad}, tiles_per_job {args.tiles_per_job}, --cores {args.cores}, "
        f"{os.cpu_count()} CPUs, libvips {pyvips.version(0)}.{pyvips.version(1)}"
    )
    cases = [
        run_case(gpx, args, args.workdir, content, size)
        for content in args.content
        for gpx in sizes
    ]
    for content in args.content:
        print(f"\n##### content: {content}")
        report([c for c in cases if c["content"] == content])
    print("\nours / pyvips (resize + pyramidal save of the same source), target <= 2:")
    for case in cases:
        if not case["failed"]:
            ratio = case["ours"].wall_s / case["pyvips"].wall_s
            print(f"  {case['content']:8s} {case['gpx']:.3f} Gpx: {ratio:.2f}x")
    return 1 if any(c["failed"] for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
