# Input functions of a mural's re-rolls (rules/reroll.smk): the windows, blocks and SR
# tiles its re-roll entries make necessary, on the plan of rules/mural_plan.smk.
import functools

from snakemake.exceptions import WorkflowError

from blkassist.errors import ConfigError
from blkassist.refine import reroll as rr


@functools.cache
def reroll_plan(mural):
    """Every window, block and SR tile the mural's re-roll entries make necessary."""
    settings = REFINE[mural]
    if not settings.reroll and not settings.reroll_file:
        return rr.RerollPlan()
    if not is_diffusion(mural):
        raise ConfigError(
            f"murals.{mural}.refine.reroll: the mural takes the SR path "
            f"({mural_path(mural)[1]}), so it has no refinement windows to re-roll; "
            "remove the entries (and reroll_file) or set path: diffusion"
        )
    raw = rr.gather_entries(
        mural, settings.reroll, settings.reroll_file, SETTINGS.schema
    )
    if not raw:
        return rr.RerollPlan()
    if config["canvases"]["temporary"]:
        raise ConfigError(
            f"murals.{mural}.refine.reroll: a re-roll reads the SR steps' canvases, which "
            "canvases.temporary: true removes; set canvases.temporary: false"
        )
    plan = mural_plan(mural)
    stages = refine_stages(mural)
    entries = rr.resolve_entries(raw, stages, (plan.final_width, plan.final_height))
    keyed = {s.name: {**settings.pixel_settings(s), "qa": settings.qa} for s in stages}
    sr = {"model": MURALS[mural].model, "pad": MURALS[mural].pad,
          "precision": MURALS[mural].precision}  # fmt: skip
    return rr.plan_rerolls(
        entries, stages, list(plan.passes), MURALS[mural].pad, keyed, sr
    )


def sr_dir(mural, step):
    return f"work/{mural}/pass{step}"


def reroll_folder(mural, kind, where):
    """A pass's folder (windows, blocks; `where` a RefinePass) or an SR step's (tiles)."""
    return sr_dir(mural, where) if kind == "tiles" else stage_dir(mural, where)


def reroll_pieces(mural, kind, where):
    plan = reroll_plan(mural)
    if kind == "tiles":
        return plan.tiles.get(where, {})
    return (plan.variants if kind == "windows" else plan.blocks).get(where.name, {})


@functools.cache
def reroll_chunks(mural, kind, where):
    """The jobs of one kind of piece of a pass (or SR step): those not made yet."""
    settings = REFINE[mural]
    per_job = {"windows": settings.tiles_per_job, "blocks": settings.blocks_per_job,
               "tiles": MURALS[mural].tiles_per_job}[kind]  # fmt: skip
    folder = reroll_folder(mural, kind, where)
    return rr.chunks(
        reroll_pieces(mural, kind, where),
        per_job,
        lambda index, unit: rr.is_done(folder, kind, index, unit.key),
    )


def reroll_markers(mural, kind, where, indices=None):
    """Markers of the jobs making pieces `indices` (all if None) not made yet."""
    folder = reroll_folder(mural, kind, where)
    return [
        f"{folder}/{rr.FOLDER}/{kind}-{chunk.name}.done"
        for chunk in reroll_chunks(mural, kind, where)
        if indices is None or set(chunk.members) & set(indices)
    ]


def all_reroll_markers(mural):
    stages = refine_stages(mural) if is_diffusion(mural) else []
    markers = [m for s in stages for kind in ("windows", "blocks")
               for m in reroll_markers(mural, kind, s)]  # fmt: skip
    steps = sorted({s.step for s in stages})
    return markers + [m for step in steps for m in reroll_markers(mural, "tiles", step)]


def find_chunk(mural, kind, where, name):
    for chunk in reroll_chunks(mural, kind, where):
        if chunk.name == name:
            return chunk
    raise WorkflowError(
        f"no {kind} re-roll job {name} in mural {mural}'s plan: its entries changed since; "
        "ask for the mural's result, not for this job"
    )


def previous_stage(mural, stage):
    """The pass before `stage` on the same SR step's canvas, or None."""
    stages = [s for s in refine_stages(mural) if s.step == stage.step]
    position = stages.index(stage)
    return stages[position - 1] if position else None


def member_boxes(stage, indices):
    return [
        (w.x, w.y, w.x + w.width, w.y + w.height) for w in map(stage.window, indices)
    ]


def sr_view(mural, step, within=None):
    """SR step `step`'s canvas as a re-roll sees it (its re-upscaled tiles over it)."""
    tiles = reroll_plan(mural).tiles.get(step, {})
    return {
        "canvas": f"work/{mural}/canvas{step}.json",
        "overlays": rr.tile_overlays(sr_dir(mural, step), tiles, within),
    }


def stage_view(mural, stage, within=None):
    """A pass's canvas as a re-roll sees it (its re-blended blocks over it)."""
    blocks = reroll_plan(mural).blocks.get(stage.name, {})
    return {
        "canvas": f"{stage_dir(mural, stage)}/allocation.json",
        "overlays": rr.overlays(stage_dir(mural, stage), blocks, within),
    }


def pieces_meeting(pieces, boxes):
    return [i for i, p in pieces.items() if any(rr.meets(p.box, b) for b in boxes)]


def reroll_window_job(wildcards):
    """(stage, chunk, the boxes its windows read) of a reroll_windows job."""
    stage = refine_stage(wildcards)
    chunk = find_chunk(wildcards.mural, "windows", stage, wildcards.chunk)
    return stage, chunk, member_boxes(stage, chunk.members)


def reroll_window_inputs(wildcards):
    mural = wildcards.mural
    stage, chunk, boxes = reroll_window_job(wildcards)
    plan = reroll_plan(mural)
    inputs = {
        "allocation": f"{stage_dir(mural, stage)}/allocation.json",
        "done": stage_done(mural, stage),
        "model": refine_model(mural),
        "lora": REFINE[mural].lora or [],
        "sr": reroll_markers(
            mural,
            "tiles",
            stage.step,
            pieces_meeting(plan.tiles.get(stage.step, {}), boxes),
        ),
    }
    earlier = previous_stage(mural, stage)
    if earlier is not None:
        blocks = plan.blocks.get(earlier.name, {})
        inputs["previous"] = reroll_markers(
            mural, "blocks", earlier, pieces_meeting(blocks, boxes)
        )
    return inputs


def reroll_window_params(wildcards):
    mural = wildcards.mural
    stage, chunk, boxes = reroll_window_job(wildcards)
    variants = reroll_plan(mural).variants[stage.name]
    folder = stage_dir(mural, stage)
    earlier = previous_stage(mural, stage)
    source = (
        sr_view(mural, stage.step, boxes)
        if earlier is None
        else stage_view(mural, earlier, boxes)
    )
    members = [
        {
            "window": index,
            "key": variants[index].key,
            "entry": (
                variants[index].entry.defining() if variants[index].entry else None
            ),
            "reads": list(variants[index].reads),
            "path": rr.piece(folder, "windows", index, variants[index].key),
        }
        for index in chunk.members
    ]
    return {
        "members": members,
        "source": source,
        "base": sr_view(mural, stage.step, boxes),
    }


def reroll_block_job(wildcards):
    stage = refine_stage(wildcards)
    return stage, find_chunk(wildcards.mural, "blocks", stage, wildcards.chunk)


def reroll_block_inputs(wildcards):
    mural = wildcards.mural
    stage, chunk = reroll_block_job(wildcards)
    blocks = reroll_plan(mural).blocks[stage.name]
    windows = {i for b in chunk.members for i, _ in blocks[b].windows}
    return {
        "allocation": f"{stage_dir(mural, stage)}/allocation.json",
        "done": stage_done(mural, stage),
        "windows": reroll_markers(mural, "windows", stage, windows),
    }


def reroll_block_members(wildcards):
    mural = wildcards.mural
    stage, chunk = reroll_block_job(wildcards)
    blocks = reroll_plan(mural).blocks[stage.name]
    folder = stage_dir(mural, stage)
    return [
        {
            "block": index,
            "key": blocks[index].key,
            "path": rr.piece(folder, "blocks", index, blocks[index].key),
            "windows": [
                [i, rr.piece(folder, "windows", i, key)]
                for i, key in blocks[index].windows
            ],
        }
        for index in chunk.members
    ]


def reroll_tile_job(wildcards):
    step = int(wildcards.step)
    chunk = find_chunk(wildcards.mural, "tiles", step, wildcards.chunk)
    sr = mural_plan(wildcards.mural).passes[step - 1]
    boxes = [
        sr.tile_at(t).padded(
            MURALS[wildcards.mural].pad, sr.input_width, sr.input_height
        )
        for t in chunk.members
    ]
    last = [s for s in refine_stages(wildcards.mural) if s.step == step - 1][-1]
    return step, chunk, boxes, last


def reroll_tile_inputs(wildcards):
    mural = wildcards.mural
    step, chunk, boxes, last = reroll_tile_job(wildcards)
    blocks = reroll_plan(mural).blocks.get(last.name, {})
    return {
        "allocation": f"work/{mural}/canvas{step}.json",
        "done": stage_done(mural, last),
        "previous": reroll_markers(
            mural, "blocks", last, pieces_meeting(blocks, boxes)
        ),
        "weights": model_weights(wildcards),
    }


def reroll_tile_params(wildcards):
    mural = wildcards.mural
    step, chunk, boxes, last = reroll_tile_job(wildcards)
    tiles = reroll_plan(mural).tiles[step]
    members = [
        {
            "tile": index,
            "key": tiles[index].key,
            "reads": list(tiles[index].reads),
            "path": rr.piece(sr_dir(mural, step), "tiles", index, tiles[index].key),
        }
        for index in chunk.members
    ]
    return {"members": members, "source": stage_view(mural, last, boxes)}


def final_reroll(wildcards):
    """The last pass's re-blended blocks: the assembly lays them over its canvas."""
    if not is_diffusion(wildcards.mural):
        return {"overlays": [], "markers": []}
    last = refine_stages(wildcards.mural)[-1]
    return {
        "overlays": stage_view(wildcards.mural, last)["overlays"],
        "markers": reroll_markers(wildcards.mural, "blocks", last),
    }


def reroll_report(mural):
    """The report's params: what each pass's re-roll is (entries, pieces, keys)."""
    plan = reroll_plan(mural)
    rerolled = []
    for stage in refine_stages(mural):
        variants = plan.variants.get(stage.name, {})
        if not variants:
            continue
        folder = stage_dir(mural, stage)
        rerolled.append(
            {
                "pass": stage.name,
                "view": stage_view(mural, stage),
                "base": sr_view(mural, stage.step),
                "regions": [list(box) for box in plan.regions[stage.name]],
                "windows": [
                    {
                        "window": index,
                        "key": v.key,
                        "asked_by": v.entry.origin if v.entry else None,
                        "record": rr.piece(folder, "windows", index, v.key) + ".json",
                    }
                    for index, v in sorted(variants.items())
                ],
            }
        )
    return {"passes": rerolled, "cost": plan.cost()}
