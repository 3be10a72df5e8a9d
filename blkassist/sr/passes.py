"""The upscale path's jobs: allocate a pass's canvas, run a tile batch, assemble the mural."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict

from blkassist import canvas
from blkassist.devices import lease_device
from blkassist.fsutil import read_json, write_json
from blkassist.sr.lanczos import LanczosUpscaler
from blkassist.sr.tiler import ProgressLog, upscale_batch
from blkassist.tiling import PassPlan

log = logging.getLogger(__name__)


def _canvas_path(reference: str) -> str:
    """A canvas is named either directly (canvas0.zarr) or by its allocation record."""
    return read_json(reference)["canvas"] if reference.endswith(".json") else reference


def allocate_pass(plan_fields: dict, previous: str, target: str, progress: str, record: str):
    """Create pass `plan`'s empty output canvas and forget any earlier tile progress."""
    plan = PassPlan(**plan_fields)
    source = canvas.open_canvas(_canvas_path(previous))
    if source.shape[:2] != (plan.input_height, plan.input_width):
        raise RuntimeError(
            f"canvas {previous} is {source.shape[1]}x{source.shape[0]}, but the plan expects "
            f"{plan.input_width}x{plan.input_height}; rerun with --forceall for this mural"
        )
    shutil.rmtree(progress, ignore_errors=True)
    bands = source.shape[2]
    canvas.create(target, plan.output_width, plan.output_height, bands, plan.output_chunk)
    write_json(
        record,
        {
            "canvas": target,
            "input_canvas": _canvas_path(previous),
            "progress": progress,
            "bands": bands,
            "plan": asdict(plan),
        },
    )
    log.info(
        "pass %d: %dx%d -> %dx%d in %d tiles",
        plan.number,
        plan.input_width,
        plan.input_height,
        plan.output_width,
        plan.output_height,
        plan.tile_count,
    )


def _make_upscaler(model: str, weights, device: str, precision: str, threads: int):
    if model == "lanczos":
        return LanczosUpscaler()  # and no torch import, which alone costs ~0.5 GB of memory
    import torch

    from blkassist.sr.models import NeuralUpscaler

    torch.set_num_threads(max(1, threads))
    return NeuralUpscaler.from_file(weights, device, precision)


def run_tile_batch(
    allocation: str,
    batch: int,
    model: str,
    weights: str | None,
    pad: int,
    tiles_per_forward: int,
    precision: str,
    lock_dir: str,
    threads: int,
    marker: str,
) -> None:
    record = read_json(allocation)
    plan = PassPlan(**record["plan"])
    source = canvas.open_canvas(record["input_canvas"])
    target = canvas.open_canvas(record["canvas"], mode="r+")
    progress = ProgressLog(record["progress"], batch)
    with lease_device(lock_dir) as lease:
        upscaler = _make_upscaler(model, weights, lease.torch_device, precision, threads)
        per_forward = tiles_per_forward if lease.device == "cuda" else 1
        report = upscale_batch(plan, batch, source, target, upscaler, pad, progress, per_forward)
    log.info(
        "batch %d: %d tiles (%d already done) in %.1f s on %s",
        batch,
        report.tiles,
        report.skipped,
        report.seconds,
        lease.torch_device,
    )
    write_json(marker, {"batch": batch, "device": lease.device, **asdict(report)})
