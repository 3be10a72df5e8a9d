# Input functions and plans of the diffusion path (rules/refine.smk); common.smk's upscale
# functions call is_diffusion and refined_step_inputs to route a diffusion mural's SR steps
# and assembly through its refined canvases.
import functools

from blkassist.flux.single_file import check_flux_model
from blkassist.refine.settings import choose_path, mural_refine_settings, plan_stages

REFINE = {name: mural_refine_settings(config, name) for name in config["murals"]}


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
    markers = []
    for blend in range(stage.blend_count):
        blocks = stage.blend_blocks(blend)
        markers.append(f"{folder}/blend-{blocks.start}-{blocks.stop - 1}.done")
    return markers


def tile_marker(mural, stage, batch):
    """A tile job's marker, named by its window range (tiles_per_job may change)."""
    first, stop = stage.batch_range(batch)
    return f"{stage_dir(mural, stage)}/tiles-{first}-{stop - 1}.done"


def stage_tile_markers(mural, stage):
    return [tile_marker(mural, stage, batch) for batch in range(stage.batch_count)]


def blend_tile_markers(wildcards):
    """The tile jobs whose windows the blocks of a blend job are composed from."""
    stage = refine_stage(wildcards)
    blocks = range(int(wildcards.first), int(wildcards.last) + 1)
    return [
        tile_marker(wildcards.mural, stage, batch)
        for batch in stage.block_batches(blocks)
    ]


def refined_step_inputs(mural, step):
    """The last refined canvas of SR step `step` (what the next step or the assembly reads)."""
    stage = [s for s in refine_stages(mural) if s.step == step][-1]
    return {
        "canvas": f"{stage_dir(mural, stage)}/allocation.json",
        "batches": stage_blend_markers(mural, stage),
    }


def refine_allocation_inputs(wildcards):
    """A pass refines the previous pass's canvas (or the SR step's output), anchored to
    the SR step's output."""
    stages = refine_stages(wildcards.mural)
    stage = refine_stage(wildcards)
    position = stages.index(stage)
    base = f"work/{wildcards.mural}/canvas{stage.step}.json"
    if position == 0 or stages[position - 1].step != stage.step:
        previous = {
            "previous": base,
            "batches": batch_markers(wildcards.mural, stage.step),
        }
    else:
        earlier = stages[position - 1]
        previous = {
            "previous": f"{stage_dir(wildcards.mural, earlier)}/allocation.json",
            "batches": stage_blend_markers(wildcards.mural, earlier),
        }
    # The model and LoRA too: new weights must reset the pass's progress.
    weights = {"model": refine_model(wildcards.mural)}
    if REFINE[wildcards.mural].lora:
        weights["lora"] = REFINE[wildcards.mural].lora
    return {**previous, "base": base, **weights}


def refine_model(mural):
    return workflow_file(REFINE[mural].model)


def refine_pixel_settings(wildcards):
    return REFINE[wildcards.mural].pixel_settings(refine_stage(wildcards))


def refine_report_stages(mural):
    """The report's params: what defines each pass (no marker names: they change with
    tiles_per_job, and a params change would redo finished work)."""
    stages = []
    for stage in refine_stages(mural):
        folder = stage_dir(mural, stage)
        stages.append(
            {
                "allocation": f"{folder}/allocation.json",
                "seams": f"{folder}/seams.json",
                "heatmap": f"{folder}/seams.png",
                "settings": REFINE[mural].pixel_settings(stage),
            }
        )
    return stages


def refine_report_inputs(wildcards):
    stages = refine_stages(wildcards.mural)
    return {
        "seams": [f"{stage_dir(wildcards.mural, s)}/seams.json" for s in stages],
        "heatmaps": [f"{stage_dir(wildcards.mural, s)}/seams.png" for s in stages],
        "markers": [m for s in stages for m in stage_tile_markers(wildcards.mural, s)],
        "model": refine_model(wildcards.mural),  # its scheduler: the passes' sigmas
    }


def refinement_provenance(wildcards):
    """The refinement report, for the assembly of a diffusion mural."""
    if not is_diffusion(wildcards.mural):
        return []
    return f"work/{wildcards.mural}/refine.provenance.json"


def used_flux_models():
    """The Flux models the configured targets use (random specs, diffusers folders,
    ComfyUI's single files)."""
    models = set()
    if CONCEPTOR["runs"] or CONCEPTOR["concepts"]:
        models.add(FLUX_MODEL)
    if TEXTURE_RUNS:
        models.add(TEXTURE_MODEL)
    if STENCIL_RUNS or STENCIL_ASSET_SETS:
        models.add(STENCIL_FLUX_MODEL)
    models |= {refine_model(m) for m in MURALS if REFINE[m].path == "diffusion"}
    return models


if workflow.is_main_process:
    # Missing or wrong model files are named now, from their headers, before any job runs.
    for _model in sorted(used_flux_models()):
        check_flux_model(_model)
