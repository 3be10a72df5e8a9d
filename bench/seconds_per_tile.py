"""Device seconds per tile of the upscalers: the figure behind the plan's GPU-hour estimate.

Runs the real tiler (upscale_batch, zarr canvas to zarr canvas) on a synthetic source with
an RRDBNet of Real-ESRGAN x4plus's shape (23 blocks, 64 features; random weights cost the
same as trained ones) and with lanczos, on CUDA when there is one, else the CPU. Prints
seconds per tile and per megapixel of padded tile input: put the first into
`murals.NAME.seconds_per_tile`, or the second into blkassist/plan.py's defaults.

    .venv/bin/python bench/seconds_per_tile.py                 # tile 512, pad 32
    .venv/bin/python bench/seconds_per_tile.py --quick         # tile 64, pad 16, 4 tiles
    .venv/bin/python bench/seconds_per_tile.py --tile 256 --tiles-per-forward 1 4 8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blkassist import canvas  # noqa: E402
from blkassist.compat import rrdbnet_class  # noqa: E402
from blkassist.sr.lanczos import LanczosUpscaler  # noqa: E402
from blkassist.sr.models import NeuralUpscaler  # noqa: E402
from blkassist.sr.tiler import ProgressLog, upscale_batch  # noqa: E402
from blkassist.tiling import plan_mural  # noqa: E402


def x4plus_shaped(device: str, precision: str) -> NeuralUpscaler:
    torch.manual_seed(0)
    model = rrdbnet_class()(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23,
                            num_grow_ch=32)  # fmt: skip
    model.native_scale = 4
    return NeuralUpscaler(model.eval(), device, precision)


def measure(upscaler, tile: int, pad: int, tiles: int, per_forward: int, folder: Path) -> float:
    """Seconds per tile over `tiles` interior-sized tiles (after one warm-up forward)."""
    side = tile * int(np.ceil(np.sqrt(tiles)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    plan = plan_mural(side, side, scale=4, tile=tile, tiles_per_job=tiles).passes[0]
    source = canvas.create(folder / "in.zarr", side, side, 3, tile)
    source[:] = pixels
    target = canvas.create(folder / "out.zarr", plan.output_width, plan.output_height, 3,
                           plan.output_chunk)  # fmt: skip
    upscaler(pixels[None, : tile + 2 * pad, : tile + 2 * pad], 4)  # warm-up
    started = time.perf_counter()
    report = upscale_batch(plan, 0, source, target, upscaler, pad,
                           ProgressLog(folder / "progress", 0), per_forward)  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / report.tiles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--pad", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--tiles-per-forward", type=int, nargs="+", default=[4])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tile 64, pad 16, 4 tiles")
    args = parser.parse_args(argv)
    if args.quick:
        args.tile, args.pad, args.tiles = 64, 16, 4
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    window_mpx = (args.tile + 2 * args.pad) ** 2 / 1e6
    print(f"seconds_per_tile: tile {args.tile}, pad {args.pad}, {args.tiles} tiles, "
          f"device {device}, torch threads {args.threads}")  # fmt: skip
    print(f"{'model':10s} {'per forward':>11s} {'s/tile':>10s} {'s/input Mpx':>12s}")
    folder = Path(tempfile.mkdtemp(prefix="seconds-per-tile-"))
    try:
        cases = [("lanczos", LanczosUpscaler(), 1)]
        neural = x4plus_shaped(device, args.precision)
        cases += [("rrdbnet", neural, n) for n in args.tiles_per_forward]
        for name, upscaler, per_forward in cases:
            run = folder / f"{name}-{per_forward}"
            run.mkdir()
            seconds = measure(upscaler, args.tile, args.pad, args.tiles, per_forward, run)
            print(f"{name:10s} {per_forward:11d} {seconds:10.3f} {seconds / window_mpx:12.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
