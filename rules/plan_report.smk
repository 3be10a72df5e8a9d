# A mural's planning numbers (tiles, jobs, disk, GPU memory and hours, licences): its
# check job's params and the plan line a dry run prints, from the SR and refinement plans.
from blkassist import licences
from blkassist.gpu_memory import declared_devices, refine_memory_or_reason
from blkassist.plan import (
    estimate,
    memory_table,
    plan_line,
    sr_memory,
    sr_pass_costs,
    with_refinement,
)


def mural_report(mural):
    """The planning numbers of `mural` (tiles, jobs, disk, GPU-hours), without running."""
    settings = MURALS[mural]
    plan = mural_plan(mural)
    bands = 4 if source_has_alpha(mural) else 3
    costs = sr_pass_costs(
        plan, bands, settings.model, settings.pad, settings.seconds_per_tile
    )
    memory = {}
    if settings.is_neural:
        memory["upscale_tile_batch"] = sr_memory(
            settings.model,
            settings.tile,
            settings.pad,
            max(step.scale for step in plan.passes),
            settings.tiles_per_forward,
            settings.precision,
        )
    if is_diffusion(mural):
        refine = REFINE[mural]
        costs = with_refinement(
            costs, refine_stages(mural), bands, refine.seconds_per_window
        )
        memory["refine_tile_batch"] = refine_memory_or_reason(
            workflow_file(refine.model),
            quantize=refine.quantize,
            tile=refine.tile,
            tiles_per_forward=refine.tiles_per_forward,
            max_sequence_length=refine.max_sequence_length,
        )
        # The QA gate and re-rolls sample one window at a time (the gate with its context).
        alone = {
            "qa_rerender": (
                refine.tile + 2 * refine.qa["context"] if refine.qa_enabled else 0
            ),
            "reroll_windows": refine.tile if reroll_plan(mural) else 0,
        }
        for job, tile in alone.items():
            if tile:
                memory[job] = refine_memory_or_reason(
                    workflow_file(refine.model),
                    quantize=refine.quantize,
                    tile=tile,
                    tiles_per_forward=1,
                    max_sequence_length=refine.max_sequence_length,
                )
    totals = estimate(
        (plan.source_width, plan.source_height),
        (plan.final_width, plan.final_height),
        bands,
        costs,
        memory_table(memory, declared_devices(config["gpu"])),
    )
    # refuses entries the mural cannot take, before any job
    rerolls = reroll_plan(mural)
    if rerolls:
        totals["reroll"] = rerolls.cost()
    # Which terms govern the result, before any GPU time is spent on it.
    return {**totals, "licences": licences.mural(config, mural, is_diffusion(mural))}


def print_plans():
    """One line per mural whose size is known now, so that a dry run shows the cost."""
    for mural in MURALS:
        source = MURALS[mural].source
        if source in producible_sources():
            print(f"mural {mural}: planned after its source is made and probed")
            continue
        if header_size(source, MAX_SOURCE_PIXELS) is None:
            print(f"mural {mural}: source {source} unusable; its probe job says why")
            continue
        print(plan_line(mural, mural_report(mural)))
