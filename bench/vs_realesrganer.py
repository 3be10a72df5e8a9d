"""Our tiler vs realesrgan's RealESRGANer: same image, same x4plus weights, same tiling.

The real Real-ESRGAN x4plus weights are converted from the installed ncnn package
(cached in bench/out/models). For each image size, two child processes run on the CPU:

1. RealESRGANer(scale=4, tile, tile_pad, pre_pad=0, half=False).enhance(bgr, outscale=4),
   which keeps the whole image and its float32 output in memory;
2. ours: NeuralUpscaler + upscale_batch from zarr canvas to zarr canvas (all tiles in one
   batch), as an upscale_tile_batch job does;
3. workflow (`--tilers workflow`, not run by default): the whole upscale workflow from a PNG
   of the image to results/bench_final.tif (`snakemake --cores THREADS`: probe, model and
   disk check, ingest, tile jobs, assembly) with the same weights, tile and pad; its wall
   time against RealESRGANer's process wall time is a small mural's fixed cost (the
   ratio is printed, with each rule's seconds from Snakemake's benchmark files).

Each child's peak RSS is measured separately (its own ru_maxrss, and psutil polling by
the parent). The outputs are compared in RGB. Figures are printed; nothing is asserted.

    .venv/bin/python bench/vs_realesrganer.py                    # 256x192 and 768x576
    .venv/bin/python bench/vs_realesrganer.py --quick            # 160x120
    .venv/bin/python bench/vs_realesrganer.py --sizes 512x384 --image pen
    .venv/bin/python bench/vs_realesrganer.py --sizes 256x256 --tilers realesrganer workflow
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _procwatch import print_table, run_watched

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_WEIGHTS = ROOT / "bench" / "out" / "models" / "realesrgan-x4plus.pth"
SCALE = 4


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- child processes


def child_realesrganer(args) -> dict:
    import torch

    from blkassist.compat import realesrganer_class, rrdbnet_class

    torch.set_num_threads(args.threads)
    rgb = np.load(args.input)
    started = time.perf_counter()
    model = rrdbnet_class()(
        num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=SCALE
    )
    upsampler = realesrganer_class()(
        scale=SCALE,
        model_path=str(args.weights),
        model=model,
        tile=args.tile,
        tile_pad=args.pad,
        pre_pad=0,
        half=False,
        device=torch.device("cpu"),
    )
    loaded = time.perf_counter()
    rss_loaded = _rss_mb()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per tile
        output, mode = upsampler.enhance(bgr, outscale=SCALE)
    done = time.perf_counter()
    np.save(args.output, np.ascontiguousarray(output[..., ::-1]))  # BGR -> RGB
    return {
        "load_s": loaded - started,
        "compute_s": done - loaded,
        "rss_loaded_mb": rss_loaded,
        "maxrss_mb": _maxrss_mb(),
        "mode": mode,
    }


def child_ours(args) -> dict:
    import torch

    from blkassist import canvas
    from blkassist.sr.models import NeuralUpscaler
    from blkassist.sr.tiler import ProgressLog, upscale_batch
    from blkassist.tiling import PassPlan

    torch.set_num_threads(args.threads)
    work = Path(args.output)
    source = canvas.open_canvas(args.input)
    height, width, bands = source.shape
    started = time.perf_counter()
    upscaler = NeuralUpscaler.from_file(args.weights, "cpu", "fp32")
    loaded = time.perf_counter()
    rss_loaded = _rss_mb()
    all_tiles = math.ceil(width / args.tile) * math.ceil(height / args.tile)
    plan = PassPlan(1, SCALE, width, height, args.tile, tiles_per_job=all_tiles)
    target = canvas.create(
        work / "canvas1.zarr", plan.output_width, plan.output_height, bands, plan.output_chunk
    )
    report = upscale_batch(
        plan,
        0,
        source,
        target,
        upscaler,
        args.pad,
        ProgressLog(work / "progress", 0),
        args.tiles_per_forward,
    )
    done = time.perf_counter()
    return {
        "load_s": loaded - started,
        "compute_s": done - loaded,
        "rss_loaded_mb": rss_loaded,
        "maxrss_mb": _maxrss_mb(),
        "tiles": report.tiles,
    }


def child_main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["realesrganer", "ours"])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("result")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--tile", type=int, required=True)
    parser.add_argument("--pad", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tiles-per-forward", type=int, default=1)
    args = parser.parse_args(argv)
    run = child_realesrganer if args.kind == "realesrganer" else child_ours
    Path(args.result).write_text(json.dumps(run(args)))
    return 0


# ---------------------------------------------------------------- the whole workflow


def run_workflow(rgb: np.ndarray, case: Path, args):
    """The real workflow on `rgb` saved as a PNG: (watched run, result pixels, rule seconds)."""
    import pyvips
    import yaml
    from PIL import Image
    from upscale_scaling import read_benchmarks

    Image.fromarray(rgb).save(case / "source.png")
    mural = {"source": "source.png", "model": str(Path(args.weights).resolve()), "path": "sr"}
    mural |= {"scale": SCALE, "tile": args.tile, "pad": args.pad}
    config = {"gpu": {"lock_dir": str(case / "gpu-locks")}, "murals": {"bench": mural}}
    (case / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(ROOT / ".venv" / "bin" / "snakemake"), "-s", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(case), "--configfile", str(case / "config.yaml")]
    cmd += ["--cores", str(args.threads), "results/bench_final.tif"]
    with open(case / "workflow.log", "w") as log:
        watched = run_watched(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, interval=args.interval
        )
    if watched.returncode != 0:
        return watched, None, {}
    result = pyvips.Image.new_from_file(str(case / "results" / "bench_final.tif"))
    pixels = np.ndarray(
        buffer=result.write_to_memory(), dtype=np.uint8, shape=(result.height, result.width, 3)
    )
    seconds: dict[str, float] = {}
    for job in read_benchmarks(case):
        seconds[job["rule"]] = seconds.get(job["rule"], 0.0) + job["s"]
    return watched, pixels, seconds


# ---------------------------------------------------------------- parent


def make_image(kind: str, width: int, height: int, seed: int) -> np.ndarray:
    """An RGB uint8 test image of exactly width x height."""
    from PIL import Image

    if kind == "pen":
        from blkassist.demo.synth import pen_and_ink

        return np.asarray(pen_and_ink(width, height, seed).convert("RGB"))
    from skimage import data

    full = data.astronaut()  # 512x512
    aspect = width / height
    crop_w, crop_h = (512, round(512 / aspect)) if aspect >= 1 else (round(512 * aspect), 512)
    top, left = (512 - crop_h) // 2, (512 - crop_w) // 2
    crop = Image.fromarray(full[top : top + crop_h, left : left + crop_w])
    return np.asarray(crop.resize((width, height), Image.LANCZOS))


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def largest_padded_tile(width: int, height: int, tile: int, pad: int) -> str:
    """The biggest window the model sees: activations (and RSS) scale with it."""

    def side(extent: int) -> int:
        starts = range(0, extent, tile)
        return max(min(s + tile + pad, extent) - max(s - pad, 0) for s in starts)

    return f"{side(width)}x{side(height)}"


def run_size(width: int, height: int, args, workdir: Path) -> dict:
    from blkassist import canvas

    case = Path(tempfile.mkdtemp(prefix=f"vsreal-{width}x{height}-", dir=workdir))
    try:
        rgb = make_image(args.image, width, height, args.seed)
        np.save(case / "input.npy", rgb)
        source = canvas.create(case / "canvas0.zarr", width, height, 3, args.tile)
        source[:] = rgb  # what ingest_source would have written
        tiles = math.ceil(width / args.tile) * math.ceil(height / args.tile)
        common = [
            "--weights",
            str(args.weights),
            "--tile",
            str(args.tile),
            "--pad",
            str(args.pad),
            "--threads",
            str(args.threads),
        ]
        runs = {}
        workflow = None
        for kind, inp, out in (
            ("realesrganer", case / "input.npy", case / "realesrganer.npy"),
            ("ours", case / "canvas0.zarr", case / "ours"),
        ):
            if kind not in args.tilers:
                continue
            extra = []
            if kind == "ours":
                out.mkdir()
                extra = ["--tiles-per-forward", str(args.tiles_per_forward)]
            result = case / f"{kind}.json"
            cmd = [str(PYTHON), str(Path(__file__).resolve()), "--child", kind]
            cmd += [str(inp), str(out), str(result), *common, *extra]
            with open(case / f"{kind}.log", "w") as log:
                watched = run_watched(
                    cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, interval=args.interval
                )
            if watched.returncode != 0:
                print(f"{kind} FAILED (exit {watched.returncode}):")
                print((case / f"{kind}.log").read_text(errors="replace")[-3000:])
                return {"size": (width, height), "failed": True}
            runs[kind] = {**json.loads(result.read_text()), "watched": watched}
            print(
                f"{width}x{height} {kind}: {runs[kind]['compute_s']:.1f} s compute, "
                f"{watched.wall_s:.1f} s wall, peak RSS {runs[kind]['maxrss_mb']:.0f} MB",
                flush=True,
            )
        if "workflow" in args.tilers:
            watched, pixels, seconds = run_workflow(rgb, case, args)
            if watched.returncode != 0:
                print(f"workflow FAILED (exit {watched.returncode}):")
                print((case / "workflow.log").read_text(errors="replace")[-3000:])
                return {"size": (width, height), "failed": True}
            workflow = {"watched": watched, "seconds": seconds, "pixels": pixels}
            rules = ", ".join(f"{rule} {s:.1f}" for rule, s in sorted(seconds.items()))
            print(f"{width}x{height} workflow: {watched.wall_s:.1f} s wall; jobs (s): {rules}")
        diff = shapes = None
        theirs = np.load(case / "realesrganer.npy") if "realesrganer" in runs else None
        ours = None
        if "ours" in runs:
            ours = np.asarray(canvas.open_canvas(case / "ours" / "canvas1.zarr")[:])
        elif workflow:
            ours = workflow.pop("pixels")
        if theirs is not None and ours is not None:
            shapes = (theirs.shape, ours.shape)
            if theirs.shape == ours.shape:
                diff = np.abs(theirs.astype(np.int16) - ours.astype(np.int16))
        return {
            "size": (width, height),
            "failed": False,
            "tiles": tiles,
            "largest_tile": largest_padded_tile(width, height, args.tile, args.pad),
            "runs": runs,
            "workflow": workflow,
            "shapes": shapes,
            "max_diff": int(diff.max()) if diff is not None else None,
            "mean_diff": float(diff.mean()) if diff is not None else None,
            "differing": float((diff > 0).mean()) if diff is not None else None,
        }
    finally:
        if args.keep:
            print(f"kept {case}")
        else:
            shutil.rmtree(case, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(256, 192), (768, 576)], help="WxH"
    )
    parser.add_argument("--quick", action="store_true", help="one 160x120 image (2 tiles)")
    parser.add_argument("--image", choices=["astronaut", "pen"], default="astronaut")
    parser.add_argument(
        "--tilers",
        nargs="+",
        choices=["realesrganer", "ours", "workflow"],
        default=["realesrganer", "ours"],
    )
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--pad", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--tiles-per-forward", type=int, default=1, help="ours (CPU jobs: 1)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=0.1, help="RSS polling interval, s")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the case folders")
    args = parser.parse_args(argv)
    sizes = [(160, 120)] if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.weights.is_file():
        from blkassist.sr.ncnn import convert

        started = time.perf_counter()
        convert("realesrgan-x4plus", args.weights)
        print(
            f"converted x4plus weights to {args.weights} in {time.perf_counter() - started:.1f} s"
        )
    print(
        f"vs_realesrganer: {args.image} image, sizes {sizes}, tile {args.tile}, pad "
        f"{args.pad}, {args.threads} torch threads, fp32 on CPU"
    )
    results = [run_size(w, h, args, args.workdir) for w, h in sizes]
    done = [r for r in results if not r["failed"]]
    rows = []
    for r in done:
        width, height = r["size"]
        for kind, run in r["runs"].items():
            rows.append(
                [
                    f"{width}x{height}",
                    r["tiles"],
                    r["largest_tile"],
                    kind,
                    run["compute_s"],
                    run["watched"].wall_s,
                    run["compute_s"] / r["tiles"],
                    run["rss_loaded_mb"],
                    run["maxrss_mb"],
                    run["watched"].root_peak_mb,
                    run["maxrss_mb"] - run["rss_loaded_mb"],
                    run["watched"].other_cpu_s,
                ]
            )
    print_table(
        [
            "image",
            "tiles",
            "max window",
            "tiler",
            "compute s",
            "process wall s",
            "s/tile",
            "RSS after load MB",
            "peak RSS MB",
            "peak RSS MB (poll)",
            "growth MB",
            "other CPU-s",
        ],
        rows,
        title="RealESRGANer vs ours (x4plus, CPU fp32); peak RSS = child's ru_maxrss",
    )
    compared = [r for r in done if r["shapes"]]
    if compared:
        print_table(
            ["image", "output", "max |diff|", "mean |diff|", "values differing"],
            [
                [
                    "{}x{}".format(*r["size"]),
                    "x".join(map(str, r["shapes"][1])),
                    r["max_diff"] if r["max_diff"] is not None else f"shape {r['shapes']}",
                    r["mean_diff"] if r["mean_diff"] is not None else "-",
                    f"{100 * r['differing']:.3f} %" if r["differing"] is not None else "-",
                ]
                for r in compared
            ],
            title="Output difference, uint8 RGB (RealESRGANer converted from BGR)",
        )
    for r in done:
        if r["workflow"] and "realesrganer" in r["runs"]:
            ours, theirs = r["workflow"]["watched"], r["runs"]["realesrganer"]["watched"]
            width, height = r["size"]
            print(
                f"\n{width}x{height} whole workflow / RealESRGANer process: {ours.wall_s:.1f} s "
                f"/ {theirs.wall_s:.1f} s = {ours.wall_s / theirs.wall_s:.2f}x (other CPU-s "
                f"meanwhile: {ours.other_cpu_s:.0f} / {theirs.other_cpu_s:.0f}); CPU-s of the "
                f"process trees, less sensitive to a busy machine: {ours.cpu_s:.1f} / "
                f"{theirs.cpu_s:.1f} = {ours.cpu_s / theirs.cpu_s:.2f}x"
            )
    if len(done) >= 2:
        first, last = done[0], done[-1]
        print(
            f"\nPeak RSS growth from {first['size'][0]}x{first['size'][1]} (max window "
            f"{first['largest_tile']}) to {last['size'][0]}x{last['size'][1]} (max window "
            f"{last['largest_tile']}); per-tile activations grow with the window, so compare "
            "sizes with equal max windows to see the growth due to the image alone:"
        )
        for kind in set(args.tilers) & {"realesrganer", "ours"}:
            grow = last["runs"][kind]["maxrss_mb"] - first["runs"][kind]["maxrss_mb"]
            print(f"  {kind:13s} {grow:+.0f} MB")
    return 1 if len(done) != len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
