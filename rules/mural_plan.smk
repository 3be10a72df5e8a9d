# A mural's plan, known at DAG build: its source and size, its SR passes and tiles, its
# path (SR alone or SR then Flux refinement) and its refinement passes, with the names of
# the markers that say each is done. The upscale and refine input functions build on it.
import functools
from pathlib import Path

from blkassist.fsutil import read_json
from blkassist.probe import header_alpha, header_size
from blkassist.refine.settings import choose_path, plan_stages
from blkassist.tiling import plan_mural


def producible_sources():
    """Sources that a rule of this workflow makes (they need not exist yet)."""
    demo = config.get("demo_artwork")
    made = {
        f"results/concepts/picks/{pick}.png" for pick in config["conceptor"]["picks"]
    }
    made |= {f"results/compositions/{name}.png" for name in config["compositions"]}
    return made | ({demo["path"]} if demo else set())


def source_size(mural):
    """Source (width, height): from the header now, or from the probe once it has run."""
    source = MURALS[mural].source
    # A source made by the workflow may be remade; only its probe (run after it) is current.
    made_here = source in producible_sources()
    size = None if made_here else header_size(source, MAX_SOURCE_PIXELS)
    if size is None:
        probe_file = checkpoints.probe_source.get(mural=mural).output.report
        info = read_json(probe_file)
        size = (info["width"], info["height"])
    return size


@functools.cache
def mural_plan(mural):
    """The mural's tile plan, worked out once per Snakemake process: every batch job's
    input and params functions ask for it. Not cached while the probe checkpoint is still
    pending (that call raises)."""
    settings = MURALS[mural]
    return plan_mural(
        *source_size(mural),
        scale=settings.scale,
        target_long_side=settings.target_long_side,
        tile=settings.tile,
        tiles_per_job=settings.tiles_per_job,
    )


def pass_plan(wildcards):
    return mural_plan(wildcards.mural).passes[int(wildcards.step) - 1]


def last_pass(wildcards):
    return len(mural_plan(wildcards.mural).passes)


def source_has_alpha(mural):
    """From the probe once it has run, else from the header (planning only)."""
    probe_file = Path(f"work/{mural}/probe.json")
    if probe_file.exists():
        return read_json(probe_file)["has_alpha"]
    return header_alpha(MURALS[mural].source)


def batch_markers(mural, step):
    """One marker per batch, named by its tile range: a marker vouches for exactly those
    tiles, so after a re-batching only batches with other ranges run (and they skip the
    tiles an earlier batching finished)."""
    plan = mural_plan(mural).passes[step - 1]
    return [
        f"work/{mural}/pass{step}/{name}.done" for name in plan.batches.names("tiles")
    ]


@functools.cache
def mural_path(mural):
    """("sr" or "diffusion", why): auto refines only murals longer than 8192 px, with
    real Flux weights."""
    plan = mural_plan(mural)
    settings = REFINE[mural]
    return choose_path(
        settings.path, plan.final_width, plan.final_height, refine_model(mural)
    )


def is_diffusion(mural):
    return mural_path(mural)[0] == "diffusion"


def path_record(mural):
    path, reason = mural_path(mural)
    return {"path": path, "reason": reason}


def refine_model(mural):
    return SETTINGS.refine_model(mural)


@functools.cache
def refine_stages(mural):
    """Every refinement pass of a diffusion mural, in order (known at DAG build)."""
    sizes = [(p.output_width, p.output_height) for p in mural_plan(mural).passes]
    return plan_stages(sizes, REFINE[mural])


def find_stage(mural, step, number):
    for stage in refine_stages(mural):
        if (stage.step, stage.number) == (step, number):
            return stage
    raise ValueError(f"mural {mural} has no refinement pass {step}.{number}")


def refine_stage(wildcards):
    return find_stage(wildcards.mural, int(wildcards.step), int(wildcards.rpass))


def stage_dir(mural, stage):
    return f"work/{mural}/refine{stage.step}.{stage.number}"


def stage_blend_markers(mural, stage):
    """One marker per blend job, named by its block range (blocks_per_job may change)."""
    folder = stage_dir(mural, stage)
    return [f"{folder}/{name}.done" for name in stage.blend_jobs.names("blend")]


def tile_marker(mural, stage, batch):
    """A tile job's marker, named by its window range (tiles_per_job may change)."""
    return f"{stage_dir(mural, stage)}/{stage.tile_jobs.name(batch, 'tiles')}.done"


def stage_tile_markers(mural, stage):
    return [tile_marker(mural, stage, batch) for batch in range(stage.batch_count)]


def stage_done(mural, stage):
    """What says a pass's canvas is final: its QA gate's record when the gate may
    re-render windows, else its blend markers."""
    if REFINE[mural].qa_enabled:
        return [f"{stage_dir(mural, stage)}/qa.json"]
    return stage_blend_markers(mural, stage)


def refined_step_inputs(mural, step):
    """The last refined canvas of SR step `step` (what the next step or the assembly reads)."""
    stage = [s for s in refine_stages(mural) if s.step == step][-1]
    return {
        "canvas": f"{stage_dir(mural, stage)}/allocation.json",
        "batches": stage_done(mural, stage),
    }
