"""What a mural will cost before it runs: tiles, jobs, disk and device hours; and the
preflight checks (disk space, the model file) that must fail in seconds, not after ingest.

The estimator takes a list of per-pass descriptions (PassCost), so any path that adds
passes (the diffusion refinement, for instance) describes its own and reuses the totals.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from blkassist.errors import BlkAssistError, ModelFileError
from blkassist.licences import summary
from blkassist.tiling import MuralPlan, PassPlan

# Device seconds per megapixel of padded tile input, from `bench/seconds_per_tile.py
# --quick` on the 2-core CPU machine this project is built on (measured while other jobs
# ran: an upper bound). No GPU figure is built in: measure yours with that script and set
# murals.NAME.seconds_per_tile; the plan says which figure it used.
SECONDS_PER_INPUT_MPX = {
    "lanczos": 1.2,
    "rrdbnet": 1300.0,  # RRDBNet 23 blocks, 64 features (Real-ESRGAN x4plus), fp32 CPU
}
DEFAULT_FIGURE = "default: 2-core CPU, bench/seconds_per_tile.py"

# A TIFF pyramid adds a third (1/4 + 1/16 + ...) to the full-resolution level.
PYRAMID_FACTOR = 4 / 3


class DiskSpaceError(BlkAssistError):
    """The mural's canvases and result do not fit on the filesystem."""


@dataclass(frozen=True)
class PassCost:
    """One pass of any kind, as the estimator sees it."""

    name: str  # e.g. "sr pass 1", "refine pass 1.2"
    tiles: int
    jobs: int
    seconds_per_tile: float | None  # None: no figure for this kind of pass
    canvas_bytes: int  # uncompressed size of what the pass writes (canvas, window store)
    uses_gpu: bool = True
    figure: str = "config"  # where seconds_per_tile came from
    store: str = ""  # the name of what it writes, in the plan's disk table

    @property
    def device_seconds(self) -> float:
        return self.tiles * (self.seconds_per_tile or 0.0)


def model_family(model: str) -> str:
    return "lanczos" if model == "lanczos" else "rrdbnet"


def default_seconds_per_tile(model: str, tile: int, pad: int) -> float:
    window = (tile + 2 * pad) ** 2 / 1e6
    return SECONDS_PER_INPUT_MPX[model_family(model)] * window


def canvas_bytes(width: int, height: int, bands: int) -> int:
    return width * height * bands


def sr_pass_costs(
    plan: MuralPlan, bands: int, model: str, pad: int, seconds_per_tile: float | None = None
) -> list[PassCost]:
    """PassCost of every super-resolution pass of `plan`."""
    costs = []
    for step in plan.passes:
        per_tile = seconds_per_tile or default_seconds_per_tile(model, step.tile, pad)
        figure = "config" if seconds_per_tile else DEFAULT_FIGURE
        costs.append(
            PassCost(
                name=f"sr pass {step.number} (x{step.scale})",
                tiles=step.tile_count,
                jobs=step.batch_count,
                seconds_per_tile=per_tile,
                canvas_bytes=canvas_bytes(step.output_width, step.output_height, bands),
                uses_gpu=model != "lanczos",
                figure=figure,
                store=f"canvas{step.number}",
            )
        )
    return costs


NO_WINDOW_FIGURE = "refinement: no figure, set murals.NAME.refine.seconds_per_window"


def refine_pass_costs(stages, bands: int, seconds_per_window: float | None) -> list[PassCost]:
    """PassCost of every refinement pass (blkassist.refine.plan.RefinePass): windows are
    its tiles, tile and blend jobs its jobs, and it writes a window store (every window
    whole, overlaps included) and a refined canvas."""
    return [
        PassCost(
            name=f"refine pass {stage.name}" + (" (coherence)" if stage.coherence else ""),
            tiles=stage.window_count,
            jobs=stage.batch_count + stage.blend_count,
            seconds_per_tile=seconds_per_window,
            canvas_bytes=canvas_bytes(stage.width, stage.height, bands)
            + stage.window_count * canvas_bytes(stage.window_width, stage.window_height, bands),
            figure="config" if seconds_per_window else NO_WINDOW_FIGURE,
            store=f"refine{stage.name}",
        )
        for stage in stages
    ]


def with_refinement(
    sr_costs: list[PassCost], stages, bands: int, seconds_per_window: float | None
) -> list[PassCost]:
    """The SR passes and the refinement `stages`, in the order they run: each SR step,
    then the refinement passes of its output."""
    refine = refine_pass_costs(stages, bands, seconds_per_window)
    ordered = []
    for number, sr in enumerate(sr_costs, start=1):
        ordered.append(sr)
        ordered += [
            cost for cost, stage in zip(refine, stages, strict=True) if stage.step == number
        ]
    return ordered


def sr_memory(model: str, tile: int, pad: int, scale: int, tiles_per_forward: int,
              precision: str) -> dict:  # fmt: skip
    """Device memory of an SR tile job (RRDBNet; fp32 only when asked for)."""
    from blkassist.gpu_memory import sr_job_memory
    from blkassist.sr.ncnn import NCNN_MODELS

    blocks = NCNN_MODELS.get(model, {}).get("num_block", 23)  # else x4plus-shaped
    width = 4 if precision == "fp32" else 2
    return sr_job_memory(tile=tile, pad=pad, scale=scale, tiles_per_forward=tiles_per_forward,
                         width=width, num_block=blocks)  # fmt: skip


def memory_table(jobs: dict[str, dict], devices: dict[str, int]) -> dict:
    """Per GPU job kind: its device memory estimate and which declared devices fit it."""
    from blkassist.gpu_memory import describe_fit, gib

    table = {}
    for job, found in jobs.items():
        if "bytes" in found:
            table[job] = {"gib": gib(found["bytes"]), "fits": describe_fit(found["bytes"], devices),
                          **found}  # fmt: skip
        else:
            table[job] = found
    return table


def estimate(
    source: tuple[int, int],
    final: tuple[int, int],
    bands: int,
    passes: Sequence[PassCost],
    gpu_memory: dict[str, dict] | None = None,
) -> dict:
    """Totals for a mural made of `passes`: the planning report's numbers.

    Disk is an upper bound: canvases are counted uncompressed (noise does not compress)
    and the result as an uncompressed pyramid; all canvases are counted as if kept.
    `gpu_memory` is the device memory of each GPU job kind (memory_table).
    """
    source_canvas = canvas_bytes(*source, bands)
    result = int(canvas_bytes(*final, bands) * PYRAMID_FACTOR)
    canvases = {"canvas0": source_canvas} | {
        cost.store or f"canvas{number}": cost.canvas_bytes
        for number, cost in enumerate(passes, start=1)
    }
    device_seconds = sum(cost.device_seconds for cost in passes if cost.uses_gpu)
    unknown = [c.name for c in passes if c.uses_gpu and c.seconds_per_tile is None and c.tiles]
    return {
        "source": {"width": source[0], "height": source[1], "bands": bands},
        "final": {"width": final[0], "height": final[1]},
        "passes": [asdict(cost) | {"device_seconds": cost.device_seconds} for cost in passes],
        "tiles": sum(cost.tiles for cost in passes),
        "jobs": sum(cost.jobs for cost in passes),
        "disk_bytes": {"canvases": canvases, "result": result},
        "disk_bytes_total": sum(canvases.values()) + result,
        "gpu_hours": device_seconds / 3600,
        "gpu_hours_unknown_for": unknown,  # passes with no seconds-per-tile figure
        "gpu_memory": gpu_memory or {},
    }


def plan_line(mural: str, report: dict) -> str:
    """The one-line summary printed per mural in a dry run."""
    final = report["final"]
    return (
        f"mural {mural}: {final['width']}x{final['height']} "
        f"({final['width'] * final['height'] / 1e9:.2f} Gpx), {len(report['passes'])} "
        f"pass(es), {report['tiles']} tiles in {report['jobs']} jobs, disk up to "
        f"{human_bytes(report['disk_bytes_total'])}, ~{report['gpu_hours']:.2f} GPU-hours"
        + (" + unknown" if report.get("gpu_hours_unknown_for") else "")
        + f" ({'; '.join(sorted({p['figure'] for p in report['passes']}))})"
        + memory_line(report.get("gpu_memory") or {})
        + (f"; licences: {summary(report['licences'])}" if "licences" in report else "")
    )


def memory_line(table: dict) -> str:
    """ ", GPU memory per job: refine_tile_batch ~15.6 GiB (fits ...), ..." or nothing."""
    if not table:
        return ""
    parts = [
        f"{job} ~{entry['gib']} GiB ({entry['fits']})" if "gib" in entry else f"{job} unknown"
        for job, entry in table.items()
    ]
    return ", GPU memory per job: " + "; ".join(parts)


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    raise AssertionError("unreachable")


def existing_bytes(paths: Iterable[str | os.PathLike]) -> int:
    """Bytes already taken by `paths` (files or folders); a rerun replaces them."""
    total = 0
    for path in map(Path, paths):
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def peak_disk_bytes(report: dict, temporary: bool) -> int:
    """Most bytes on disk at once: everything if canvases are kept; with temporary
    canvases, the largest pair of consecutive canvases (a pass reads one, writes the next)
    plus the result (the last canvas is there while the result is written)."""
    if not temporary:
        return report["disk_bytes_total"]
    sizes = list(report["disk_bytes"]["canvases"].values())
    pairs = [a + b for a, b in itertools.pairwise(sizes)] or sizes
    return max(max(pairs), sizes[-1] + report["disk_bytes"]["result"])


def check_disk(
    needed: int, folder: str | os.PathLike, replaced: Iterable[str | os.PathLike] = ()
) -> int:
    """Raise DiskSpaceError unless `needed` bytes fit on `folder`'s filesystem, counting
    what the run will replace (`replaced`) as free. Returns the bytes available."""
    folder = Path(folder)
    probe_at = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    available = shutil.disk_usage(probe_at).free + existing_bytes(replaced)
    if needed > available:
        raise DiskSpaceError(
            f"{folder}: the mural needs up to {human_bytes(needed)} ({needed:,} bytes: "
            f"canvases uncompressed plus the result pyramid), but only "
            f"{human_bytes(available)} ({available:,} bytes) are free there. Free space, "
            "run from a folder on a bigger disk, or set canvases.temporary: true so finished "
            "canvases are removed as soon as they are used."
        )
    return available


def check_model(weights: str | os.PathLike, passes: Sequence[PassPlan]) -> dict:
    """Load `weights` without executing code and check it can do every pass's scale.

    Returns what was found (architecture, native scale). Fails with ModelFileError naming
    the file; costs a second or two, so it runs before the source is ingested.
    """
    from blkassist.sr.models import build_rrdbnet, rrdbnet_params

    model = build_rrdbnet(rrdbnet_params(weights), weights)
    native = model.native_scale
    widest = max(step.scale for step in passes)
    if native < widest:
        raise ModelFileError(
            f"{weights}: a x{native} model, but the plan has a x{widest} pass "
            f"(passes: {', '.join(f'x{step.scale}' for step in passes)}). Use a x4 model "
            f"(e.g. realesrgan-x4plus) or a scale the model covers per pass."
        )
    parameters = sum(p.numel() for p in model.parameters())
    return {"architecture": "RRDBNet", "native_scale": native, "parameters": parameters}


def check_mural(
    source: Sequence,
    weights: str,
    model: str,
    passes: Sequence[dict],
    final_size: Sequence[int],
    replaced: Iterable[str],
    output: str,
    temporary: bool = False,
    refine_stages: Sequence = (),
) -> None:
    """The mural's preflight, run before ingest: the model loads and fits the plan, and the
    canvases, refinement window stores (`refine_stages`, the diffusion path) and result fit
    on the disk. `source` is (width, height, has_alpha). Writes what it found to `output`."""
    import logging

    from blkassist.fsutil import write_json

    log = logging.getLogger(__name__)
    width, height, has_alpha = source
    plans = [PassPlan(**fields) for fields in passes]
    bands = 4 if has_alpha else 3
    found = {"model": model}
    if model != "lanczos":
        found["weights"] = {"path": str(weights), **check_model(weights, plans)}
        log.info("model %s: %s", weights, found["weights"])
    costs = [
        PassCost(f"pass {p.number}", p.tile_count, 0, 0.0,
                 canvas_bytes(p.output_width, p.output_height, bands), store=f"canvas{p.number}")
        for p in plans
    ]  # fmt: skip
    costs = with_refinement(costs, refine_stages, bands, None)
    totals = estimate((width, height), tuple(final_size), bands, costs)
    needed = peak_disk_bytes(totals, temporary)
    available = check_disk(needed, Path(output).parent, replaced)
    found["disk"] = {"needed_bytes": needed, "available_bytes": available}
    log.info("disk: needs up to %s, %s available", human_bytes(needed), human_bytes(available))
    write_json(output, found)
