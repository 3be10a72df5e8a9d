"""The diffusion path's jobs: allocate a pass, refine a tile batch, blend a block batch,
measure a pass's seams, and report the whole refinement (provenance and seam QA)."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import zarr

from blkassist import canvas
from blkassist.devices import lease_device
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.progress import pass_progress
from blkassist.refine import seams
from blkassist.refine.blend import blend_blocks
from blkassist.refine.plan import BLOCK, RefinePass
from blkassist.refine.windows import create_store, pass_seeds, progress_for, refine_windows
from blkassist.sr.passes import IncompletePassError

log = logging.getLogger(__name__)


def canvas_path(reference: str) -> str:
    """A canvas is named directly (.zarr) or by its allocation record (.json)."""
    return read_json(reference)["canvas"] if reference.endswith(".json") else reference


def stage_plan(record: dict, tiles_per_job: int = 1, blocks_per_job: int = 1) -> RefinePass:
    return RefinePass(**record["plan"], tiles_per_job=tiles_per_job, blocks_per_job=blocks_per_job)


def allocate_stage(geometry: dict, previous: str, base: str, folder: str, record: str) -> None:
    """Create a pass's empty window store and output canvas; forget earlier progress."""
    plan = RefinePass(**geometry, tiles_per_job=1, blocks_per_job=1)
    source_path, base_path = canvas_path(previous), canvas_path(base)
    source = canvas.open_canvas(source_path)
    if source.shape[:2] != (plan.height, plan.width):
        raise RuntimeError(
            f"canvas {source_path} is {source.shape[1]}x{source.shape[0]}, but refinement pass "
            f"{plan.name} expects {plan.width}x{plan.height}; rerun with --forceall for this mural"
        )
    folder = Path(folder)
    progress = folder / "windows.progress"
    shutil.rmtree(progress, ignore_errors=True)
    bands = source.shape[2]
    store_path, canvas_out = folder / "windows.zarr", folder / "canvas.zarr"
    if store_path.exists():
        shutil.rmtree(store_path)
    create_store(store_path, plan, bands)
    canvas.create(canvas_out, plan.width, plan.height, bands, BLOCK)
    write_json(
        record,
        {
            "canvas": str(canvas_out),
            "input_canvas": source_path,
            "base_canvas": base_path,
            "windows": str(store_path),
            "progress": str(progress),
            "bands": bands,
            "plan": geometry,
        },
    )
    log.info(
        "refinement pass %s (%s) on %dx%d: %d windows of %dx%d (%d x %d grid), overlap >= %d",
        plan.name,
        "coherence, half-tile offset grid" if plan.coherence else "regular grid",
        plan.width,
        plan.height,
        plan.window_count,
        plan.window_width,
        plan.window_height,
        plan.columns,
        plan.rows,
        plan.overlap,
    )


def run_refine_batch(
    allocation: str,
    batch: int,
    mural: str,
    settings: dict,
    model: str,
    lora: str | None,
    scheduling: dict,
    lock_dir: str,
    threads: int,
    marker: str,
) -> None:
    """Refine one tile batch on a leased device, skipping windows already recorded."""
    record = read_json(allocation)
    plan = stage_plan(record, scheduling["tiles_per_job"])
    source = canvas.open_canvas(record["input_canvas"])
    base = canvas.open_canvas(record["base_canvas"])
    store = zarr.open_array(record["windows"], mode="r+")
    described = {}
    with lease_device(lock_dir) as lease:

        def make_refiner():
            import torch

            from blkassist.refine.refiner import load_flux_refiner

            torch.set_num_threads(max(1, threads))
            started = time.perf_counter()
            refiner = load_flux_refiner(
                model,
                lease.torch_device,
                quantize=settings["quantize"],
                lora=lora,
                lora_scale=settings["lora_scale"],
                prompt=settings["prompt"],
                steps=settings["steps"],
                guidance=settings["guidance"],
                max_sequence_length=settings["max_sequence_length"],
            )
            described.update(refiner.describe(settings["denoise"]))
            log.info("loaded the refiner in %.1f s", time.perf_counter() - started)
            return refiner

        per_forward = scheduling["tiles_per_forward"] if lease.device == "cuda" else 1
        report = refine_windows(
            plan,
            batch,
            source,
            base,
            store,
            make_refiner,
            progress_for(record, batch),
            denoise=settings["denoise"],
            seeds=pass_seeds(settings["seed"], mural, plan),
            anchor_strength=settings["anchor_strength"],
            anchor_levels=settings["anchor_levels"],
            tiles_per_forward=per_forward,
        )
    log.info(
        "pass %s batch %d: %d windows (%d already done) in %.1f s on %s",
        plan.name,
        batch,
        report.windows,
        report.skipped,
        report.seconds,
        lease.torch_device,
    )
    done = len(progress_for(record, batch).finished() & set(range(plan.window_count)))
    processed = report.windows - report.skipped
    what = f"refinement pass {plan.name}"
    log.info(
        "%s",
        pass_progress(what, "window", done, plan.window_count, processed, report.seconds),
    )
    write_json(
        marker,
        {"batch": batch, "device": lease.device, "refiner": described or None, **asdict(report)},
    )


def run_blend(allocation: str, blend: int, scheduling: dict, marker: str) -> None:
    record = read_json(allocation)
    plan = stage_plan(record, scheduling["tiles_per_job"], scheduling["blocks_per_job"])
    require_refined(allocation, record, plan, blend)
    store = zarr.open_array(record["windows"], mode="r")
    target = canvas.open_canvas(record["canvas"], mode="r+")
    write_json(marker, blend_blocks(plan, blend, store, target))


def require_refined(allocation: str, record: dict, plan: RefinePass, blend: int) -> None:
    """Refuse to blend windows that were never refined: tile markers written under another
    refine.tiles_per_job vouch for other windows (never blend a half-refined block)."""
    needed = {
        window.index
        for block in plan.blend_blocks(blend)
        for window in plan.covering(*plan.block_box(block))
    }
    missing = sorted(needed - progress_for(record, 0).finished())
    if missing:
        folder = Path(allocation).parent
        raise IncompletePassError(
            f"{allocation}: {len(missing)} windows that blend job {blend} needs are not "
            f"refined (first: {missing[:5]}); their tile markers were written under another "
            f"refine.tiles_per_job. Delete {folder}/tiles-*.done and rerun the same command: "
            "refined windows are kept."
        )


def run_seam_qa(allocation: str, report: str, heatmap: str) -> None:
    record = read_json(allocation)
    plan = stage_plan(record)
    image = canvas.open_canvas(record["canvas"])
    base = canvas.open_canvas(record["base_canvas"])
    started = time.perf_counter()
    measured = seams.measure(plan, image, base)
    thumb, factor = seams.thumbnail(image)
    with atomic_path(heatmap) as tmp:
        seams.heatmap(thumb, factor, measured).save(tmp, format="PNG")
    write_json(report, measured)
    log.info(
        "pass %s: %d seam segments, worst score %.2f at %s, mean %.2f (%.1f s)",
        plan.name,
        measured["seam_count"],
        measured["worst_score"],
        measured["worst_at"],
        measured["mean_score"],
        time.perf_counter() - started,
    )


def write_refine_report(
    mural: str,
    path_choice: dict,
    stages: list[dict],
    seams_png: str,
    seams_json: str,
    provenance: str,
) -> None:
    """Gather each pass's seam QA and provenance. `stages` lists per pass: its pixel
    settings, allocation, seam report, heatmap and tile markers."""
    from PIL import Image

    from blkassist.refine.windows import seed_list

    passes, panels, qa = [], [], []
    for stage in stages:
        record = read_json(stage["allocation"])
        plan = stage_plan(record)
        measured = read_json(stage["seams"])
        summary = {k: v for k, v in measured.items() if k != "segments"}
        refiners = [read_json(m).get("refiner") for m in stage["markers"]]
        refiner = next((r for r in refiners if r), None)
        settings = stage["settings"]
        passes.append(
            {
                "pass": plan.name,
                "coherence": plan.coherence,
                "denoise": settings["denoise"],
                "start_sigma": refiner["start_sigma"] if refiner else None,
                "refiner": refiner,
                "settings": settings,
                "windows": plan.window_count,
                "grid": {"columns": plan.columns, "rows": plan.rows, "xs": plan.xs, "ys": plan.ys},
                "seeds": {
                    "rule": "sha256('seed:mural:step:pass:window') first 8 bytes >> 1",
                    "per_window": seed_list(settings["seed"], mural, plan),
                },
                "seams": summary,
            }
        )
        qa.append(measured)
        kind = " (coherence)" if plan.coherence else ""
        label = f"pass {plan.name}{kind}: worst {summary['worst_score']:.2f}"
        panels.append((label, Image.open(stage["heatmap"]).convert("RGB")))
    with atomic_path(seams_png) as tmp:
        seams.panel_sheet(panels).save(tmp, format="PNG")
    write_json(seams_json, {"mural": mural, "passes": qa})
    write_json(provenance, {"mural": mural, "path": path_choice, "passes": passes})
    log.info("mural %s: %s path (%s)", mural, path_choice["path"], path_choice["reason"])
    for entry in passes:
        log.info(
            "pass %s: denoise %.3f (start sigma %s), worst seam %.2f, mean %.2f",
            entry["pass"],
            entry["denoise"],
            entry["start_sigma"],
            entry["seams"]["worst_score"],
            entry["seams"]["mean_score"],
        )
