"""The upscale path's jobs: allocate a pass's canvas, run a tile batch, check a pass is whole.

A pass is defined by its allocation record (canvasK.json): the plan geometry and how its
pixels are made (model, pad, precision). Scheduling (which tiles a job takes, tiles per
forward, threads, the device lock folder) is given to each job separately and never
written into that record, so re-batching never invalidates finished tiles.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict

from blkassist import canvas
from blkassist.devices import lease_device
from blkassist.errors import BlkAssistError
from blkassist.fsutil import read_json, write_json
from blkassist.plan import sr_memory
from blkassist.progress import pass_progress
from blkassist.sr.lanczos import LanczosUpscaler
from blkassist.sr.tiler import ProgressLog, upscale_tiles
from blkassist.tiling import PassPlan

log = logging.getLogger(__name__)


class IncompletePassError(BlkAssistError):
    """A pass's canvas is missing tiles although every batch says it finished."""


def allocate_pass(
    plan_fields: dict,
    previous: str,
    target: str,
    progress: str,
    record: str,
    upscale: dict | None = None,
    rerolls: str | None = None,
):
    """Create pass `plan`'s empty output canvas and forget any earlier tile progress (and
    the tiles a re-roll upscaled again from the old canvas, in folder `rerolls`).

    `plan_fields` is the pass geometry (PassPlan.geometry()); `upscale` says how its pixels
    are made ({"model", "pad", "precision"}); both go into the record the batches read.
    `previous` is canvas0.zarr or the previous pass's allocation record (.json).
    """
    if previous.endswith(".json"):
        require_complete(previous)
    plan = PassPlan(**plan_fields)
    source_path, source = canvas.open_sized(
        previous, plan.input_width, plan.input_height, f"pass {plan.number}"
    )
    shutil.rmtree(progress, ignore_errors=True)
    if rerolls:
        shutil.rmtree(rerolls, ignore_errors=True)
    bands = source.shape[2]
    canvas.create(target, plan.output_width, plan.output_height, bands, plan.output_chunk)
    write_json(
        record,
        {
            "canvas": target,
            "input_canvas": source_path,
            "progress": progress,
            "bands": bands,
            "plan": plan.geometry(),
            "upscale": upscale or {},
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


def require_complete(allocation: str) -> None:
    """Refuse to go on from a pass whose progress log lacks tiles (never expected: a guard
    against a marker written by a different batching or a hand-edited work folder)."""
    record = read_json(allocation)
    if "windows" in record:
        return  # a refinement pass (blkassist.refine): whole once its blend markers exist
    plan = PassPlan(**record["plan"])
    done = ProgressLog(record["progress"], 0).finished()
    missing = sorted(set(range(plan.tile_count)) - done)
    if missing:
        raise IncompletePassError(
            f"{allocation}: {len(missing)} of {plan.tile_count} tiles of pass {plan.number} "
            f"are not finished (first: {missing[:5]}). Rerun the same command; if this "
            "persists, delete the pass's batch markers (work/MURAL/passK/) and rerun."
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
    tiles: tuple[int, int],
    weights: str | None,
    tiles_per_forward: int,
    lock_dir: str,
    threads: int,
    marker: str,
    batch: int = 0,
    devices: dict[str, int] | None = None,
) -> None:
    """Upscale tiles [first, stop) of the pass described by `allocation`, on a GPU with
    the memory the plan states for the job (`devices`: declared sizes, id -> bytes).

    Tiles already in the pass's progress log are skipped; when all are, the model is not
    even loaded (a re-batched, finished pass costs one job start per batch).
    """
    record = read_json(allocation)
    plan = PassPlan(**record["plan"])
    settings = record["upscale"]
    source = canvas.open_canvas(record["input_canvas"])
    target = canvas.open_canvas(record["canvas"], mode="r+")
    progress = ProgressLog(record["progress"], batch)
    todo = plan.tiles_between(*tiles)
    device = "none"
    if set(range(*tiles)) <= progress.finished():
        log.info("tiles %d-%d: all finished already", tiles[0], tiles[1] - 1)
        report = None
    else:
        need = None
        if settings["model"] != "lanczos":
            need = sr_memory(settings["model"], plan.tile, settings["pad"], plan.scale,
                             tiles_per_forward, settings["precision"])["bytes"]  # fmt: skip
        advice = "Lower tiles_per_forward or tile for this mural, or use a larger GPU."
        with lease_device(lock_dir, need_bytes=need, memory=devices, advice=advice) as lease:
            device = lease.device
            upscaler = _make_upscaler(
                settings["model"], weights, lease.torch_device, settings["precision"], threads
            )
            pad = settings["pad"]
            report = upscale_tiles(
                plan, todo, source, target, upscaler, pad, progress, tiles_per_forward
            )
        log.info(
            "tiles %d-%d: %d (%d already done) in %.1f s on %s, %d per forward",
            tiles[0],
            tiles[1] - 1,
            report.tiles,
            report.skipped,
            report.seconds,
            lease.torch_device,
            tiles_per_forward,
        )
    done = len(progress.finished() & set(range(plan.tile_count)))
    processed, seconds = (report.tiles - report.skipped, report.seconds) if report else (0, 0.0)
    what = f"pass {plan.number} (x{plan.scale})"
    log.info("%s", pass_progress(what, "tile", done, plan.tile_count, processed, seconds))
    summary = asdict(report) if report else {"tiles": len(todo), "skipped": len(todo)}
    write_json(
        marker,
        {"batch": batch, "first": tiles[0], "stop": tiles[1], "device": device, **summary},
    )
