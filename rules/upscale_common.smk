# Input functions of the SR passes and the assembly (rules/upscale.smk), and of the SR
# models they use (rules/esrgan.smk); a diffusion mural's steps read its refined canvases
# (named in rules/mural_plan.smk).
from pathlib import Path

from blkassist.sr.ncnn import NCNN_MODELS


def source_input(wildcards):
    """The mural's source as a job input, unless it is missing and nothing makes it.

    A missing source is then reported by the probe job, so that with --keep-going the
    other murals still finish instead of the whole DAG failing to build.
    """
    source = MURALS[wildcards.mural].source
    return source if Path(source).exists() or source in producible_sources() else []


def canvas_output(path):
    """A pass canvas as an output, temp() when config canvases.temporary says so."""
    return temp(path) if config["canvases"]["temporary"] else path


def allocation_inputs(wildcards):
    """A pass reads the previous canvas, which is whole once its pass is complete."""
    step = int(wildcards.step)
    inputs = {
        "canvas": f"work/{wildcards.mural}/canvas{step - 1}.zarr",
        "weights": model_weights(wildcards),
    }
    if step > 1 and is_diffusion(wildcards.mural):
        # Diffusion path (rules/refine.smk): the last refined canvas of the previous step.
        refined = refined_step_inputs(wildcards.mural, step - 1)
        del inputs["canvas"]  # named by its allocation record
        inputs["allocation"] = refined["canvas"]
        inputs["batches"] = refined["batches"]
    elif step > 1:
        inputs["allocation"] = f"work/{wildcards.mural}/canvas{step - 1}.json"
        inputs["batches"] = batch_markers(wildcards.mural, step - 1)
    return inputs


def pass_source(wildcards):
    """What a tile batch reads (for the DAG; the job reads it from its allocation record):
    the previous SR canvas, or on the diffusion path the previous step's last refined
    canvas."""
    step = int(wildcards.step)
    if step > 1 and is_diffusion(wildcards.mural):
        return refined_step_inputs(wildcards.mural, step - 1)["canvas"]
    return f"work/{wildcards.mural}/canvas{step - 1}.zarr"


def final_pass_files(wildcards):
    step = last_pass(wildcards)
    if is_diffusion(wildcards.mural):  # the last refined canvas (rules/refine.smk)
        refined = refined_step_inputs(wildcards.mural, step)
        return {"batches": refined["batches"], "allocation": refined["canvas"]}
    return {
        "batches": batch_markers(wildcards.mural, step),
        "allocation": f"work/{wildcards.mural}/canvas{step}.json",
        "canvas": f"work/{wildcards.mural}/canvas{step}.zarr",
    }


def pass_settings(wildcards):
    """What defines a pass's pixels besides its geometry (scheduling knobs excluded)."""
    settings = MURALS[wildcards.mural]
    found = {
        "model": settings.model,
        "pad": settings.pad,
        "precision": settings.precision,
    }
    mural = wildcards.mural
    if int(wildcards.step) > 1 and is_diffusion(mural) and REFINE[mural].qa_enabled:
        found["refined_qa"] = REFINE[mural].qa  # it reads a QA-gated canvas
    return found


def mural_source(mural):
    """(width, height, has_alpha) of the mural's source, for its check job."""
    plan = mural_plan(mural)
    return [plan.source_width, plan.source_height, source_has_alpha(mural)]


def weights_path(model):
    """The weights behind a model name: a path, a converted package model or a fine-tune run."""
    return SETTINGS.sr_weights(model)


def model_weights(wildcards):
    """The mural's weights as an input: made by a rule, or there already (else the mural's
    check job reports the missing file, and --keep-going still finishes the others)."""
    model = MURALS[wildcards.mural].model
    if model == "lanczos":
        return []
    path = weights_path(model)
    made_here = (
        model in NCNN_MODELS
        or model.startswith("esrgan:")
        and model.removeprefix("esrgan:") in ESRGAN_RUNS
    )
    return path if made_here or Path(path).exists() else []


def gpus_for(wildcards):
    return int(MURALS[wildcards.mural].is_neural)


def tile_threads(wildcards):
    """Lanczos (Pillow) resizes on one core, so its tile jobs run side by side."""
    return 2 if MURALS[wildcards.mural].is_neural else 1


def esrgan_inputs(wildcards):
    run = ESRGAN_RUNS[wildcards.run]
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in run["collections"]],
        "init": weights_path(run["init"]),
    }
