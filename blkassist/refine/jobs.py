"""The diffusion path's jobs: allocate a pass, refine a tile batch, blend a block batch,
measure a pass's seams, and report the whole refinement (provenance and seam QA)."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import zarr

from blkassist import canvas
from blkassist.devices import lease_device
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.progress import pass_progress
from blkassist.refine import seams
from blkassist.refine.blend import blend_blocks
from blkassist.refine.plan import BLOCK, RefinePass
from blkassist.refine.qa import QaStore, run_rounds, window_scores, worst_windows
from blkassist.refine.settings import QaSettings
from blkassist.refine.windows import (
    TileReport,
    create_store,
    pass_field,
    pass_noise,
    progress_for,
    refine_windows,
)
from blkassist.sr.passes import IncompletePassError

if TYPE_CHECKING:
    from blkassist.gpu_memory import GpuSettings

log = logging.getLogger(__name__)


def stage_plan(record: dict, tiles_per_job: int = 1, blocks_per_job: int = 1) -> RefinePass:
    """The pass's plan from its allocation record (batching only matters to the DAG)."""
    return RefinePass(**record["plan"], tiles_per_job=tiles_per_job, blocks_per_job=blocks_per_job)


def allocate_stage(geometry: dict, previous: str, base: str, folder: str, record: str) -> None:
    """Create a pass's empty window store and output canvas; forget earlier progress."""
    plan = RefinePass(**geometry, tiles_per_job=1, blocks_per_job=1)
    reader = f"refinement pass {plan.name}"
    source_path, source = canvas.open_sized(previous, plan.width, plan.height, reader)
    base_path = canvas.canvas_path(base)
    folder = Path(folder)
    progress = folder / "windows.progress"
    shutil.rmtree(progress, ignore_errors=True)
    # A new pass: the QA's saved originals and every re-roll made on the old one are stale.
    shutil.rmtree(QaStore(folder).folder, ignore_errors=True)
    drop_rerolls(folder)
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
        "refinement pass %s (%s, grid offset %.3g of a step) on %dx%d: %d windows of %dx%d "
        "(%d x %d grid), overlap >= %d",
        plan.name,
        "coherence" if plan.coherence else "regular",
        plan.phase,
        plan.width,
        plan.height,
        plan.window_count,
        plan.window_width,
        plan.window_height,
        plan.columns,
        plan.rows,
        plan.overlap,
    )


def refine_memory(model: str, settings: dict, tiles_per_forward: int) -> dict:
    """Device memory of this mural's refinement tile jobs, as the plan states it."""
    from blkassist.gpu_memory import refine_memory_or_reason

    return refine_memory_or_reason(
        model,
        quantize=settings["quantize"],
        tile=settings["tile"],
        tiles_per_forward=tiles_per_forward,
        max_sequence_length=settings["max_sequence_length"],
    )


def run_refine_batch(
    allocation: str,
    windows: tuple[int, int],
    mural: str,
    settings: dict,
    model: str,
    lora: str | None,
    tiles_per_forward: int,
    gpu: GpuSettings,
    threads: int,
    marker: str,
) -> None:
    """Refine windows [first, stop) of a pass on a leased device, skipping windows already
    finished (then no device is leased and no model loaded). `tiles_per_forward` and `gpu`
    are scheduling: the job reads them from the config (blkassist.job_settings)."""
    record = read_json(allocation)
    plan = stage_plan(record)
    first, stop = windows
    todo = plan.windows_between(first, stop)
    progress = progress_for(record, first)
    described: dict = {}
    device = "none"
    if {w.index for w in todo} <= progress.finished():
        log.info("pass %s windows %d-%d: all finished already", plan.name, first, stop - 1)
        done = len(progress.finished() & set(range(plan.window_count)))
        what = f"refinement pass {plan.name}"
        log.info("%s", pass_progress(what, "window", done, plan.window_count, 0, 0.0))
        report = TileReport(len(todo), len(todo), 0.0)
        write_json(marker, {"first": first, "stop": stop, "device": device, "refiner": None,
                            **asdict(report)})  # fmt: skip
        return
    source = canvas.open_canvas(record["input_canvas"])
    base = canvas.open_canvas(record["base_canvas"])
    store = zarr.open_array(record["windows"], mode="r+")
    need = refine_memory(model, settings, tiles_per_forward)
    if "unknown" in need:
        log.warning("device memory unknown: %s", need["unknown"])
    with lease_device(
        gpu.lock_dir, need_bytes=need.get("bytes"), memory=gpu.memory,
        advice=memory_advice(mural),
    ) as lease:  # fmt: skip
        device = lease.device

        def make_refiner():
            return load_refiner(model, lease, settings, lora, threads, need, described)

        per_forward = tiles_per_forward if lease.device == "cuda" else 1
        report = refine_windows(
            todo,
            source,
            base,
            store,
            make_refiner,
            progress,
            denoise=settings["denoise"],
            noise=pass_noise(settings["seed"], mural, plan),
            anchor_strength=settings["anchor_strength"],
            anchor_levels=settings["anchor_levels"],
            tiles_per_forward=per_forward,
            device=lease.torch_device,
        )
        peak = _peak_note(lease.device, need.get("bytes"))
    log.info(
        "pass %s windows %d-%d: %d (%d already done) in %.1f s on %s (%s)%s",
        plan.name, first, stop - 1, report.windows, report.skipped, report.seconds,
        lease.torch_device, ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()), peak,
    )  # fmt: skip
    done = len(progress.finished() & set(range(plan.window_count)))
    processed = report.windows - report.skipped
    what = f"refinement pass {plan.name}"
    log.info(
        "%s",
        pass_progress(what, "window", done, plan.window_count, processed, report.seconds),
    )
    write_json(
        marker,
        {"first": first, "stop": stop, "device": device, "refiner": described or None,
         **asdict(report)},
    )  # fmt: skip


def memory_advice(mural: str) -> str:
    return (
        f"Set murals.{mural}.refine.quantize: true (8-bit transformer), lower "
        "refine.tiles_per_forward or refine.tile, or declare larger GPUs in gpu.devices."
    )


def load_refiner(model: str, lease, settings: dict, lora: str | None, threads: int,
                 need: dict, described: dict, prompts=()):  # fmt: skip
    """Load the pass's Flux refiner (and LoRA) on the leased device, once per job; what it
    is goes into `described` (the provenance)."""
    import torch

    from blkassist.refine.refiner import load_flux_refiner

    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    if lease.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
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
        other_prompts=tuple(prompts),
    )
    described.update(refiner.describe(settings["denoise"]))
    log.info("loaded the refiner in %.1f s%s", time.perf_counter() - started,
             _peak_note(lease.device, need.get("bytes")))  # fmt: skip
    return refiner


class LazyRefiner:
    """A job's device and refiner, leased and loaded the first time they are needed (a job
    with nothing to sample leases nothing and loads nothing). Use inside an ExitStack,
    which releases the lease."""

    def __init__(self, stack, mural: str, model: str, settings: dict, lora: str | None,
                 gpu: GpuSettings, threads: int, *, tile: int | None = None,
                 prompts=()):  # fmt: skip
        self.stack, self.mural, self.model, self.settings = stack, mural, model, settings
        self.lora, self.gpu, self.threads, self.prompts = lora, gpu, threads, prompts
        # Windows are sampled one at a time here, `tile` pixels square at most.
        sized = {**settings, "tile": tile or settings["tile"]}
        self.need = refine_memory(model, sized, tiles_per_forward=1)
        self.lease = None
        self.described: dict = {}
        self._refiner = None

    def __call__(self):
        if self._refiner is None:
            if "unknown" in self.need:
                log.warning("device memory unknown: %s", self.need["unknown"])
            self.lease = self.stack.enter_context(lease_device(
                self.gpu.lock_dir, need_bytes=self.need.get("bytes"),
                memory=self.gpu.memory, advice=memory_advice(self.mural),
            ))  # fmt: skip
            self._refiner = load_refiner(self.model, self.lease, self.settings, self.lora,
                                         self.threads, self.need, self.described,
                                         self.prompts)  # fmt: skip
        return self._refiner

    @property
    def device(self) -> str:
        """The torch device of the lease (call after the refiner was made)."""
        return self.lease.torch_device if self.lease else "cpu"


def _peak_note(device: str, estimate: int | None) -> str:
    """The device's peak so far beside the plan's estimate (CUDA only)."""
    if device != "cuda":
        return ""
    import torch

    from blkassist.gpu_memory import gib

    peak = torch.cuda.max_memory_allocated()
    planned = f" (estimate {gib(estimate)} GiB)" if estimate else ""
    return f"; device peak {gib(peak)} GiB{planned}"


def run_blend(allocation: str, blocks: tuple[int, int], marker: str) -> None:
    """Compose output blocks [first, stop) of a pass from its refined windows."""
    record = read_json(allocation)
    plan = stage_plan(record)
    span = range(*blocks)
    require_refined(allocation, record, plan, span)
    store = zarr.open_array(record["windows"], mode="r")
    target = canvas.open_canvas(record["canvas"], mode="r+")
    write_json(marker, blend_blocks(plan, span, store, target))


def require_refined(allocation: str, record: dict, plan: RefinePass, blocks: range) -> None:
    """Refuse to blend windows that were never refined, naming them and why."""
    progress = progress_for(record, 0)
    missing = sorted(plan.window_ids(blocks) - progress.finished())
    if not missing:
        return
    folder = Path(record["windows"]).parent  # where the pass's tile markers are
    markers = _tile_markers(folder)
    torn = progress.torn()
    reasons: dict[str, list[int]] = {}
    stale: set[str] = set()
    for index in missing:
        claimed = [name for name, (first, stop) in markers.items() if first <= index < stop]
        if index in torn:
            why = "their progress line was torn by a crash while it was being written"
        elif claimed:
            why = (
                f"{claimed[0]} says their job finished, but the progress log "
                f"{record['progress']} has no record of them (removed or edited since)"
            )
            stale.update(claimed)
        else:
            why = "no tile job has refined them yet (run the workflow's target, not this job)"
        reasons.setdefault(why, []).append(index)
    explained = "; ".join(f"windows {_ranges(indices)}: {why}" for why, indices in reasons.items())
    fix = (
        f" Delete {', '.join(str(folder / name) for name in sorted(stale))} and rerun the same "
        "command: refined windows are kept."
        if stale else " Rerun the workflow: finished windows are kept."
    )  # fmt: skip
    raise IncompletePassError(
        f"{allocation}: blocks {blocks.start}-{blocks.stop - 1} need {len(missing)} windows "
        f"that are not refined: {explained}.{fix}"
    )


def _ranges(indices: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _tile_markers(folder: Path) -> dict[str, tuple[int, int]]:
    """Tile-job markers in `folder` (any batching) with their [first, stop) ranges."""
    found = {}
    for path in folder.glob("tiles-*-*.done"):
        first, _, last = path.stem.removeprefix("tiles-").partition("-")
        if first.isdigit() and last.isdigit():
            found[path.name] = (int(first), int(last) + 1)
    return found


def drop_rerolls(folder: str | Path) -> None:
    """Forget the re-rolled windows and blocks of a pass whose own windows changed."""
    shutil.rmtree(Path(folder) / "reroll", ignore_errors=True)


def run_qa_rerender(
    allocation: str,
    output: str,
    mural: str,
    settings: dict,
    qa: dict,
    model: str,
    lora: str | None,
    gpu: GpuSettings,
    threads: int,
) -> None:
    """The QA gate of a blended pass: put back what an earlier run of this job re-rendered,
    measure, then re-render the windows beyond the thresholds, round by round; the record
    (rounds, reasons, final seam report) goes to `output`."""
    record = read_json(allocation)
    plan = stage_plan(record)
    folder = Path(record["windows"]).parent  # the pass's folder
    store = zarr.open_array(record["windows"], mode="r+")
    target = canvas.open_canvas(record["canvas"], mode="r+")
    restored = QaStore(folder).restore(plan, store, target)
    if restored:
        log.info("pass %s: put back %d window(s) an earlier QA run re-rendered: %s",
                 plan.name, len(restored), restored)  # fmt: skip
        drop_rerolls(folder)
    started = time.perf_counter()
    measured = seams.measure(plan, target, canvas.open_canvas(record["base_canvas"]))
    log.info("pass %s: measured %d seam segments in %.1f s", plan.name,
             measured["seam_count"], time.perf_counter() - started)  # fmt: skip
    with ExitStack() as stack:
        refiner = LazyRefiner(stack, mural, model, settings, lora, gpu, threads,
                              tile=settings["tile"] + 2 * qa["context"])  # fmt: skip
        measured, gate = run_rounds(
            plan, record, measured, refiner, QaSettings.from_config(qa),
            field=pass_field(settings["seed"], mural, plan), denoise=settings["denoise"],
            anchor_strength=settings["anchor_strength"],
            anchor_levels=settings["anchor_levels"], device=lambda: refiner.device,
        )  # fmt: skip
    write_json(output, {"report": measured, "qa": {**gate, "settings": qa},
                        "refiner": refiner.described or None})  # fmt: skip


def run_seam_qa(allocation: str, report: str, heatmap: str, gate: str | None = None) -> None:
    """A pass's seam report and heatmap; with `gate` (the QA gate's record), its final
    measurement and rounds."""
    record = read_json(allocation)
    plan = stage_plan(record)
    image = canvas.open_canvas(record["canvas"])
    base = canvas.open_canvas(record["base_canvas"])
    started = time.perf_counter()
    if gate:
        recorded = read_json(gate)
        measured = {**recorded["report"], "qa": recorded["qa"]}
        worst = recorded["qa"]["worst_windows"]
    else:
        measured = seams.measure(plan, image, base)
        worst = worst_windows(plan, window_scores(plan, measured["segments"]))
    measured["worst_windows"] = worst
    thumb, factor = seams.thumbnail(image)
    with atomic_path(heatmap) as tmp:
        seams.heatmap(thumb, factor, measured).save(tmp, format="PNG")
    write_json(report, measured)
    log.info(
        "pass %s: %d seam segments; level step worst %.2f at %s, mean %.2f; texture ratio "
        "%.2f (lowest %.2f at %s)%s (%.1f s)",
        plan.name, measured["seam_count"], measured["worst_score"], measured["worst_at"],
        measured["mean_score"], measured["texture_ratio"], measured["worst_texture"],
        measured["worst_texture_at"],
        f"; QA gate: {measured['qa']['outcome']}" if gate else "",
        time.perf_counter() - started,
    )  # fmt: skip


def _refiner_description(allocation: str, markers: list[str]) -> dict | None:
    """What a tile job of the pass recorded about its refiner: from the current batching's
    markers, else (their windows were all finished by an earlier batching, so they loaded
    no model) from other markers written since the pass was allocated."""
    folder = Path(allocation).parent
    current = [m for m in markers if Path(m).parent == folder]
    allocated = Path(allocation).stat().st_mtime
    earlier = sorted(
        str(m) for m in folder.glob("tiles-*-*.done")
        if str(m) not in current and m.stat().st_mtime >= allocated
    )  # fmt: skip
    refiners = (read_json(m).get("refiner") for m in [*current, *earlier])
    return next((r for r in refiners if r), None)


def _rerolled_seams(plan: RefinePass, measured: dict, reroll: dict, heatmap) -> tuple:
    """A re-rolled pass's seam report (its segments near the changed regions measured
    again on the canvas as the re-roll sees it), with the re-roll's provenance; the changed
    segments are drawn again over `heatmap`."""
    started = time.perf_counter()
    view, base = canvas.open_view(reroll["view"]), canvas.open_view(reroll["base"])
    regions = [tuple(box) for box in reroll["regions"]]
    before = {(s["axis"], s["at"], s["from"]): s for s in measured["segments"]}
    effective = seams.measure(plan, view, base, only=regions, reference=measured)
    changed = [s for s in effective["segments"] if before[s["axis"], s["at"], s["from"]] != s]
    effective["worst_windows"] = worst_windows(plan, window_scores(plan, effective["segments"]))
    if "qa" in measured:
        effective["qa"] = measured["qa"]
    factor = seams.thumbnail_factor(view.shape)
    seams.draw_segments(heatmap, factor, changed)
    windows = [{**read_json(w["record"]), "asked_by": w["asked_by"]} for w in reroll["windows"]]
    chosen = [w["window"] for w in windows if w["asked_by"]]
    log.info("pass %s: re-rolled windows %s (%d more read a changed pixel); %d seam "
             "segment(s) measured again (%.1f s)", plan.name, chosen, len(windows) - len(chosen),
             len(changed), time.perf_counter() - started)  # fmt: skip
    return effective, {
        "windows": windows,
        "regions": reroll["regions"],
        "blocks": len(reroll["view"]["overlays"]),
        "segments_measured_again": len(changed),
    }


def write_refine_report(
    mural: str,
    path_choice: dict,
    stages: list[dict],
    seams_png: str,
    seams_json: str,
    provenance: str,
    markers: list[str],
    model: str,
    rerolls: dict | None = None,
) -> None:
    """Gather each pass's seam QA and provenance. `stages` lists per pass: its pixel
    settings, allocation, seam report and heatmap; the refiner's description comes from the
    pass's tile `markers` (those of the current batching), the sigmas from `model`'s
    scheduler. `rerolls` (reroll_report in the workflow): per pass, its re-rolled windows,
    whose records give the provenance, and the regions whose seams are measured again."""
    from PIL import Image

    from blkassist.refine.sigmas import pass_schedule, scheduler_config

    scheduler = scheduler_config(model)
    rerolled = {entry["pass"]: entry for entry in (rerolls or {}).get("passes", [])}
    passes, panels, qa = [], [], []
    for stage in stages:
        record = read_json(stage["allocation"])
        plan = stage_plan(record)
        measured = read_json(stage["seams"])
        heatmap = Image.open(stage["heatmap"]).convert("RGB")
        reroll = None
        if plan.name in rerolled:
            measured, reroll = _rerolled_seams(plan, measured, rerolled[plan.name], heatmap)
        summary = {k: v for k, v in measured.items() if k != "segments"}
        refiner = _refiner_description(stage["allocation"], markers)
        settings = stage["settings"]
        schedule = pass_schedule(settings["denoise"], settings["steps"], scheduler)
        passes.append(
            {
                "pass": plan.name,
                "coherence": plan.coherence,
                **schedule,
                "refiner": refiner,
                "settings": settings,
                "windows": plan.window_count,
                "grid": {
                    "columns": plan.columns,
                    "rows": plan.rows,
                    "phase": plan.phase,
                    "xs": plan.xs,
                    "ys": plan.ys,
                },
                "noise": {
                    **pass_field(settings["seed"], mural, plan).describe(),
                    "field_seed_rule": "sha256('seed:mural:step:pass') first 8 bytes >> 1",
                    "window": "latents at (x / 8, y / 8) of the field, x and y the window's "
                    "origin in canvas pixels",
                },
                "seams": summary,
                "reroll": reroll,
            }
        )
        qa.append(measured)
        kind = " (coherence)" if plan.coherence else ""
        label = (f"pass {plan.name}{kind}: step {summary['worst_score']:.2f}, "
                 f"texture {summary['texture_ratio']:.2f}")  # fmt: skip
        panels.append((label, heatmap))
    with atomic_path(seams_png) as tmp:
        seams.panel_sheet(panels).save(tmp, format="PNG")
    # The last pass is scored on every seam of its SR step's passes in the final canvas.
    keys = ("pass", "texture_ratio", "worst_texture", "worst_texture_at", "worst_score")
    final = {key: qa[-1][key] for key in keys}
    write_json(seams_json, {"mural": mural, "final": final, "passes": qa})
    write_json(provenance, {"mural": mural, "path": path_choice, "passes": passes})
    log.info("mural %s: %s path (%s)", mural, path_choice["path"], path_choice["reason"])
    for entry in passes:
        log.info(
            "pass %s: denoise %.3f (start sigma %.3f, %d model evaluations), level step worst "
            "%.2f mean %.2f, texture ratio %.2f (lowest %.2f)",
            entry["pass"], entry["denoise"], entry["start_sigma"], entry["model_evaluations"],
            entry["seams"]["worst_score"], entry["seams"]["mean_score"],
            entry["seams"]["texture_ratio"], entry["seams"]["worst_texture"],
        )  # fmt: skip
