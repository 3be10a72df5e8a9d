"""BLK-Stencil asset rendering: assets per second and peak memory, per category and for a
whole training set.

Each case runs in its own process (peak RSS from the kernel's ru_maxrss, exact):

* one row per category (single, pair, triple, cloud, shape): `--count` assets planned from
  the default config at `--resolution`, rendered (render/s), then with the set's copies
  (a mirrored and an augmented copy, written as PNG: assets/s end to end);
* a whole set: build_stencil_dataset with `--count` x 5 base assets and the default shares.

    .venv/bin/python bench/stencil_assets.py [--quick] [--resolution 1024] [--count 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _procwatch import print_table, run_watched

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("single", "pair", "triple", "cloud", "shape")
ONLY = {  # shares that make a set of one category
    "single": {"pair": 0.0, "triple": 0.0, "cloud": 0.0, "shape": 0.0},
    "pair": {"pair": 1.0, "triple": 0.0, "cloud": 0.0, "shape": 0.0},
    "triple": {"pair": 0.0, "triple": 1.0, "cloud": 0.0, "shape": 0.0},
    "cloud": {"pair": 0.0, "triple": 0.0, "cloud": 1.0, "shape": 0.0},
    "shape": {"pair": 0.0, "triple": 0.0, "cloud": 0.0, "shape": 1.0},
}


def settings(resolution: int, count: int, shares: dict | None = None):
    from blkassist.config import validate_config

    dataset = {"size": count, "resolution": resolution, "seed": 0}
    if shares is not None:
        dataset["shares"] = shares
    config = {"stencil": {"datasets": {"bench": dataset}}}
    validate_config(config, REPO / "config" / "schema.yaml")
    return config["stencil"]["datasets"]["bench"], config["stencil"]["synthetic"]


def child(category: str, resolution: int, count: int, out: Path) -> None:
    """Render one case and print its timings as one JSON line."""
    sys.path.insert(0, str(REPO))
    from blkassist.stencil.dataset import build_stencil_dataset, plan_synthetic, render_spec

    if category == "set":
        dataset, synthetic = settings(resolution, count)
        started = time.perf_counter()
        summary = build_stencil_dataset("bench", dataset, synthetic, [], str(out / "set"))
        elapsed = time.perf_counter() - started
        print(
            json.dumps({"assets": count, "files": summary["counts"]["files"], "total_s": elapsed})
        )
        return
    dataset, synthetic = settings(resolution, count, ONLY[category])
    specs = plan_synthetic(dataset, synthetic)
    started = time.perf_counter()
    pixels = 0
    for spec in specs:
        image = render_spec(spec)
        pixels += image.shape[0] * image.shape[1]
    render_s = time.perf_counter() - started
    started = time.perf_counter()
    summary = build_stencil_dataset("bench", dataset, synthetic, [], str(out / category))
    total_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "assets": len(specs),
                "files": summary["counts"]["files"],
                "render_s": render_s,
                "total_s": total_s,
                "mpx": pixels / len(specs) / 1e6,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--count", type=int, default=10, help="assets per category")
    parser.add_argument("--quick", action="store_true", help="256 px, 2 assets per category")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.count = 256, 2
    if args.child:
        child(args.child, args.resolution, args.count, Path(args.out))
        return
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="stencil-bench-"))
    try:
        for case in (*CATEGORIES, "set"):
            count = args.count * (len(CATEGORIES) if case == "set" else 1)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                case,
                "--resolution",
                str(args.resolution),
                "--count",
                str(count),
                "--out",
                str(scratch),
            ]
            log = scratch / f"{case}.out"
            with open(log, "w") as handle:
                watched = run_watched(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
            if watched.returncode != 0:
                sys.exit(f"{case} failed:\n{log.read_text()[-4000:]}")
            result = json.loads(log.read_text().strip().splitlines()[-1])
            render_rate = result["assets"] / result["render_s"] if "render_s" in result else None
            rows.append(
                [
                    case,
                    result["assets"],
                    result["files"],
                    round(result["mpx"], 2) if "mpx" in result else "-",
                    round(render_rate, 2) if render_rate else "-",
                    round(result["assets"] / result["total_s"], 2),
                    round(result["files"] / result["total_s"], 2),
                    round(watched.kernel_maxrss_mb),
                    round(watched.other_cpu_s, 1),
                ]
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(
        [
            "case",
            "assets",
            "PNGs",
            "Mpx/asset",
            "render assets/s",
            "set assets/s",
            "PNGs/s",
            "peak RSS MB",
            "other CPU-s",
        ],
        rows,
        title=f"BLK-Stencil assets at {args.resolution} px buckets (one process per case; "
        "'set' includes mirrored and augmented copies, captions and PNG writes)",
    )


if __name__ == "__main__":
    main()
