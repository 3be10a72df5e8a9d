# Input functions of the diffusion path (rules/refine.smk), on the plan of
# rules/mural_plan.smk; its report lists the re-rolls (rules/reroll_common.smk).


def blend_tile_markers(wildcards):
    """The tile jobs whose windows the blocks of a blend job are composed from."""
    stage = refine_stage(wildcards)
    blocks = range(int(wildcards.first), int(wildcards.last) + 1)
    return [
        tile_marker(wildcards.mural, stage, batch)
        for batch in stage.block_batches(blocks)
    ]


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
            "batches": stage_done(wildcards.mural, earlier),
        }
    # The model and LoRA too: new weights must reset the pass's progress.
    weights = {"model": refine_model(wildcards.mural)}
    if REFINE[wildcards.mural].lora:
        weights["lora"] = REFINE[wildcards.mural].lora
    return {**previous, "base": base, **weights}


def refine_pixel_settings(wildcards):
    return REFINE[wildcards.mural].pixel_settings(refine_stage(wildcards))


def gate_settings(wildcards):
    """The QA gate's settings, when it may re-render (they define the gated canvas)."""
    return REFINE[wildcards.mural].qa if REFINE[wildcards.mural].qa_enabled else None


def refine_allocation_settings(wildcards):
    """A pass's pixel settings, and the QA gate's when the pass reads a gated canvas (a
    changed gate redoes the passes after it)."""
    settings = refine_pixel_settings(wildcards)
    stages = refine_stages(wildcards.mural)
    reads_refined = stages.index(refine_stage(wildcards)) > 0
    if reads_refined and REFINE[wildcards.mural].qa_enabled:
        settings = {**settings, "previous_qa": REFINE[wildcards.mural].qa}
    return settings


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
        "rerolls": all_reroll_markers(wildcards.mural),
    }


def qa_settings(wildcards):
    return REFINE[wildcards.mural].qa


def qa_gpus(wildcards):
    return int(REFINE[wildcards.mural].qa_enabled)


def seam_gate(wildcards):
    """The QA gate's record, when the mural has one."""
    if REFINE[wildcards.mural].qa_enabled:
        return f"{stage_dir(wildcards.mural, refine_stage(wildcards))}/qa.json"
    return []


def refinement_provenance(wildcards):
    """The refinement report, for the assembly of a diffusion mural."""
    if not is_diffusion(wildcards.mural):
        return []
    return f"work/{wildcards.mural}/refine.provenance.json"
