"""The re-roll's jobs: sample chosen (and propagated) windows again, blend the blocks they
touch, upscale again the SR tiles that read a changed canvas. Each writes only its own
pieces (reroll.piece: pixels, then a record naming seeds and settings); a piece whose
record exists is kept, so a killed job resumes piece by piece and a job never loads a model
for pieces that are made already."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from blkassist import canvas
from blkassist.fsutil import read_json, write_json
from blkassist.refine.blend import compose_block
from blkassist.refine.jobs import LazyRefiner, stage_plan
from blkassist.refine.noise import FieldNoise, NoiseField, RerollNoise, generation_seed
from blkassist.refine.windows import pass_field, resample_window

if TYPE_CHECKING:
    from blkassist.gpu_memory import GpuSettings

log = logging.getLogger(__name__)


def _done(path: str) -> bool:
    return Path(path + ".json").is_file()


def window_noise(field: NoiseField, plan, window, member: dict, gate: dict | None):
    """(noise for a box, denoise or None for the pass's, context, what to record): a chosen
    window draws generation `seed` of the re-roll in its interior; a propagated one draws
    what the pass drew for it (its QA generation, if the QA gate re-rendered it)."""
    interior = plan.interior(window)
    entry = member.get("entry")
    if entry:
        new = NoiseField(generation_seed(field.seed, "reroll", entry["generation"]))
        noise = lambda box: RerollNoise(field, new, box.x, box.y, interior)  # noqa: E731
        about = {"kind": "reroll", "generation": entry["generation"], "field_seed": new.seed}
        return noise, entry.get("denoise"), 0, about
    regenerated = (gate or {}).get("regenerated", {}).get(str(window.index))
    if regenerated:
        new = NoiseField(regenerated["field_seed"])
        noise = lambda box: RerollNoise(field, new, box.x, box.y, interior)  # noqa: E731
        about = {"kind": "qa", "generation": regenerated["round"], "field_seed": new.seed}
        return noise, regenerated["denoise"], regenerated["context"], about
    about = {"kind": "pass", "generation": 0, "field_seed": field.seed}
    return (lambda box: FieldNoise(field, box.x, box.y)), None, 0, about


def sample_variants(
    plan,
    members: list[dict],
    source,
    base,
    make_refiner,
    *,
    field: NoiseField,
    settings: dict,
    gate: dict | None = None,
    device=lambda: "cpu",
) -> list[int]:
    """Sample the `members` ({window, key, entry or None, path, reads}) not made yet from
    the canvases `source` (input) and `base` (anchor) as the re-roll sees them; each is
    written as a piece with its record. Returns the windows sampled."""
    sampled = []
    for member in members:
        if _done(member["path"]):
            continue
        refiner = make_refiner()
        window = plan.window(member["window"])
        noise, denoise, context, about = window_noise(field, plan, window, member, gate)
        denoise = denoise or settings["denoise"]
        prompt = (member["entry"] or {}).get("prompt")
        started = time.perf_counter()
        pixels = resample_window(
            plan, window, source, base, refiner, noise, denoise=denoise,
            anchor_strength=settings["anchor_strength"], anchor_levels=settings["anchor_levels"],
            context=context, prompt=prompt, device=device(),
        )  # fmt: skip
        canvas.save_piece(member["path"] + ".zarr", pixels)
        write_json(member["path"] + ".json", {
            "pass": plan.name, "window": window.index, "key": member["key"],
            "box": [window.x, window.y, window.x + window.width, window.y + window.height],
            "noise": {**about, "pass_field_seed": field.seed}, "denoise": denoise,
            "prompt": settings["prompt"] if prompt is None else prompt, "context": context,
            "reads": member["reads"], "seconds": round(time.perf_counter() - started, 3),
        })  # fmt: skip
        sampled.append(window.index)
        log.info("pass %s window %d sampled again (%s generation %d, denoise %.3f) in %.1f s",
                 plan.name, window.index, about["kind"], about["generation"], denoise,
                 time.perf_counter() - started)  # fmt: skip
    return sampled


def run_reroll_windows(
    allocation: str,
    members: list[dict],
    mural: str,
    settings: dict,
    model: str,
    lora: str | None,
    gpu: GpuSettings,
    threads: int,
    source: dict,
    base: dict,
    gate: str | None,
    marker: str,
) -> None:
    """Sample `members` of a pass again on a leased device (leased, and Flux loaded, only
    if some are not made yet)."""
    record = read_json(allocation)
    plan = stage_plan(record)
    todo = [m for m in members if not _done(m["path"])]
    log.info("pass %s: %d window(s) to sample again (%d made already): %s", plan.name,
             len(todo), len(members) - len(todo), [m["window"] for m in todo])  # fmt: skip
    prompts = sorted({m["entry"]["prompt"] for m in todo if m["entry"] and m["entry"]["prompt"]})
    started = time.perf_counter()
    with ExitStack() as stack:
        refiner = LazyRefiner(stack, mural, model, settings, lora, gpu, threads,
                              tile=settings["tile"], prompts=prompts)  # fmt: skip
        sampled = sample_variants(
            plan, members, canvas.open_view(source), canvas.open_view(base), refiner,
            field=pass_field(settings["seed"], mural, plan), settings=settings,
            gate=read_json(gate)["qa"] if gate else None, device=lambda: refiner.device,
        )  # fmt: skip
    write_json(marker, {"pass": plan.name, "windows": [m["window"] for m in members],
                        "sampled": sampled, "seconds": round(time.perf_counter() - started, 3),
                        "refiner": refiner.described or None})  # fmt: skip


class EffectiveWindows:
    """A pass's window store as a re-roll sees it: some slots replaced by re-sampled
    windows (read like the store: [index, rows, columns])."""

    def __init__(self, store, replaced: dict[int, str]):
        self.store, self.replaced = store, replaced
        self._opened: dict[int, object] = {}

    def __getitem__(self, key):
        index, *rest = key
        if index not in self.replaced:
            return self.store[key]
        if index not in self._opened:
            self._opened[index] = canvas.open_canvas(self.replaced[index])
        return self._opened[index][tuple(rest)]


def run_reroll_blocks(allocation: str, members: list[dict], marker: str) -> None:
    """Blend `members` ({block, key, path, windows: [[window, path], ...]}) again from the
    pass's windows with the re-sampled ones in their slots."""
    record = read_json(allocation)
    plan = stage_plan(record)
    store = zarr.open_array(record["windows"], mode="r")
    started = time.perf_counter()
    made = []
    for member in members:
        if _done(member["path"]):
            continue
        replaced = {int(i): path + ".zarr" for i, path in member["windows"]}
        missing = [i for i, path in member["windows"] if not _done(path)]
        if missing:
            raise RuntimeError(
                f"block {member['block']} of pass {plan.name} needs re-sampled windows "
                f"{missing} that are not made; rerun the workflow's target"
            )
        box = plan.block_box(member["block"])
        pixels = compose_block(plan, EffectiveWindows(store, replaced), box)
        canvas.save_piece(member["path"] + ".zarr", pixels)
        write_json(member["path"] + ".json", {"pass": plan.name, "block": member["block"],
                                              "box": list(box), "key": member["key"],
                                              "windows": sorted(replaced)})  # fmt: skip
        made.append(member["block"])
    seconds = time.perf_counter() - started
    log.info("pass %s: blended %d block(s) again (%s; %d made already) in %.1f s", plan.name,
             len(made), made, len(members) - len(made), seconds)  # fmt: skip
    write_json(marker, {"pass": plan.name, "blocks": [m["block"] for m in members],
                        "blended": made, "seconds": round(seconds, 3)})  # fmt: skip


class _TileSink:
    """Receives an SR tiler's writes (output coordinates) as one piece per tile."""

    def __init__(self, plan, members: list[dict]):
        self.plan = plan
        self.by_origin = {}
        for member in members:
            tile = plan.tile_at(member["tile"])
            self.by_origin[tile.y * plan.scale, tile.x * plan.scale] = member
        self.made: list[int] = []

    def __setitem__(self, key, pixels) -> None:
        rows, columns = key
        member = self.by_origin[rows.start, columns.start]
        canvas.save_piece(member["path"] + ".zarr", np.asarray(pixels))
        box = [columns.start, rows.start, columns.stop, rows.stop]
        write_json(member["path"] + ".json", {"step": self.plan.number, "tile": member["tile"],
                                              "key": member["key"], "box": box,
                                              "reads": member["reads"]})  # fmt: skip
        self.made.append(member["tile"])

    def finished(self) -> set[int]:
        return {m["tile"] for m in self.by_origin.values() if _done(m["path"])}

    def mark(self, tiles) -> None:
        """Each piece's record is written with it."""


def run_reroll_sr_tiles(
    allocation: str,
    members: list[dict],
    source: dict,
    weights: str | None,
    tiles_per_forward: int,
    gpu: GpuSettings,
    threads: int,
    marker: str,
) -> None:
    """Upscale `members` ({tile, key, path, reads}) of an SR step again from the previous
    canvas as the re-roll sees it, with the step's own model and settings."""
    from blkassist.devices import lease_device
    from blkassist.plan import sr_memory
    from blkassist.sr.passes import _make_upscaler
    from blkassist.sr.tiler import upscale_tiles
    from blkassist.tiling import PassPlan

    record = read_json(allocation)
    plan = PassPlan(**record["plan"])
    settings = record["upscale"]
    sink = _TileSink(plan, members)
    todo = [plan.tile_at(m["tile"]) for m in members if not _done(m["path"])]
    started = time.perf_counter()
    device = "none"
    if todo:
        need = None
        if settings["model"] != "lanczos":
            need = sr_memory(settings["model"], plan.tile, settings["pad"], plan.scale,
                             tiles_per_forward, settings["precision"])["bytes"]  # fmt: skip
        advice = "Lower tiles_per_forward or tile for this mural."
        with lease_device(gpu.lock_dir, need_bytes=need, memory=gpu.memory, advice=advice) as lease:
            device = lease.device
            upscaler = _make_upscaler(settings["model"], weights, lease.torch_device,
                                      settings["precision"], threads)  # fmt: skip
            upscale_tiles(plan, todo, canvas.open_view(source), sink, upscaler,
                          settings["pad"], sink, tiles_per_forward)  # fmt: skip
    seconds = time.perf_counter() - started
    log.info("SR step %d: upscaled %d tile(s) again (%s; %d made already) in %.1f s on %s",
             plan.number, len(sink.made), sink.made, len(members) - len(todo), seconds,
             device)  # fmt: skip
    write_json(marker, {"step": plan.number, "tiles": [m["tile"] for m in members],
                        "upscaled": sink.made, "seconds": round(seconds, 3),
                        "device": device})  # fmt: skip
