import functools
from dataclasses import asdict
from pathlib import Path

from blkassist.config import mural_settings, validate_config
from blkassist.fsutil import read_json
from blkassist.plan import estimate, plan_line, sr_pass_costs
from blkassist.probe import header_alpha, header_size
from blkassist.runlock import clear_stale_locks
from blkassist.sr.ncnn import NCNN_MODELS
from blkassist.tiling import plan_mural

validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

if workflow.is_main_process:
    # A run killed by SIGKILL leaves Snakemake's locks behind; rerunning should just resume.
    for stale in clear_stale_locks():
        print(f"Removed stale Snakemake lock {stale} (its run is no longer alive).")

MURALS = {name: mural_settings(config, name) for name in config["murals"]}
MAX_SOURCE_PIXELS = config["limits"]["max_source_pixels"]
MODELS_DIR = config["models"]["dir"]


def producible_sources():
    """Sources that a rule of this workflow makes (they need not exist yet)."""
    demo = config.get("demo_artwork")
    made = {
        f"results/concepts/picks/{pick}.png" for pick in config["conceptor"]["picks"]
    }
    return made | ({demo["path"]} if demo else set())


def source_input(wildcards):
    """The mural's source as a job input, unless it is missing and nothing makes it.

    A missing source is then reported by the probe job, so that with --keep-going the
    other murals still finish instead of the whole DAG failing to build.
    """
    source = MURALS[wildcards.mural].source
    return source if Path(source).exists() or source in producible_sources() else []


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


def canvas_output(path):
    """A pass canvas as an output, temp() when config canvases.temporary says so."""
    return temp(path) if config["canvases"]["temporary"] else path


def batch_markers(mural, step):
    """One marker per batch, named by its tile range: a marker vouches for exactly those
    tiles, so after a re-batching only batches with other ranges run (and they skip the
    tiles an earlier batching finished)."""
    plan = mural_plan(mural).passes[step - 1]
    markers = []
    for batch in range(plan.batch_count):
        first, stop = plan.batch_range(batch)
        markers.append(f"work/{mural}/pass{step}/tiles-{first}-{stop - 1}.done")
    return markers


def allocation_inputs(wildcards):
    """A pass reads the previous canvas, which is whole once its pass is complete."""
    step = int(wildcards.step)
    inputs = {
        "canvas": f"work/{wildcards.mural}/canvas{step - 1}.zarr",
        "weights": model_weights(wildcards),
    }
    if step > 1:
        inputs["allocation"] = f"work/{wildcards.mural}/canvas{step - 1}.json"
        inputs["batches"] = batch_markers(wildcards.mural, step - 1)
    return inputs


def last_pass(wildcards):
    return len(mural_plan(wildcards.mural).passes)


def final_pass_files(wildcards):
    step = last_pass(wildcards)
    return {
        "batches": batch_markers(wildcards.mural, step),
        "allocation": f"work/{wildcards.mural}/canvas{step}.json",
        "canvas": f"work/{wildcards.mural}/canvas{step}.zarr",
    }


def pass_settings(wildcards):
    """What defines a pass's pixels besides its geometry (scheduling knobs excluded)."""
    settings = MURALS[wildcards.mural]
    return {
        "model": settings.model,
        "pad": settings.pad,
        "precision": settings.precision,
    }


def mural_report(mural):
    """The planning numbers of `mural` (tiles, jobs, disk, GPU-hours), without running."""
    settings = MURALS[mural]
    plan = mural_plan(mural)
    bands = 4 if source_has_alpha(mural) else 3
    costs = sr_pass_costs(
        plan, bands, settings.model, settings.pad, settings.seconds_per_tile
    )
    return estimate(
        (plan.source_width, plan.source_height),
        (plan.final_width, plan.final_height),
        bands,
        costs,
    )


def mural_source(mural):
    """(width, height, has_alpha) of the mural's source, for its check job."""
    plan = mural_plan(mural)
    return [plan.source_width, plan.source_height, source_has_alpha(mural)]


def source_has_alpha(mural):
    """From the probe once it has run, else from the header (planning only)."""
    probe_file = Path(f"work/{mural}/probe.json")
    if probe_file.exists():
        return read_json(probe_file)["has_alpha"]
    return header_alpha(MURALS[mural].source)


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


def weights_path(model):
    """The weights behind a model name: a path, a converted package model or a fine-tune run."""
    if model.endswith((".pth", ".safetensors")):
        return model
    if model.startswith("esrgan:"):
        return f"{MODELS_DIR}/esrgan-{model.removeprefix('esrgan:')}.pth"
    return f"{MODELS_DIR}/{model}.pth"


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


COLLECTIONS = config["corpus"]["collections"]
DATASETS = config["datasets"]
SYNTHETIC_CORPUS = config["corpus"].get("synthetic")


def collection_folder(wildcards):
    """The collection's folder as an input: made by a rule, or there already (else the
    normalise job reports it missing)."""
    folder = COLLECTIONS[wildcards.collection]["path"]
    made_here = SYNTHETIC_CORPUS and folder == SYNTHETIC_CORPUS["path"]
    return folder if made_here or Path(folder).is_dir() else []


def dataset_inputs(wildcards):
    collections = DATASETS[wildcards.dataset]["collections"]
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in collections],
        "captions": [f"captions/{c}/index.json" for c in collections],
        "sidecars": caption_sidecars(collections),
    }


def caption_sidecars(collections):
    """Caption sidecars as inputs, so an artist's edit rebuilds the datasets that use it.

    Captioning is a checkpoint: the sidecars are known once it has run, in the same run.
    """
    sidecars = []
    for collection in collections:
        index = checkpoints.caption_collection.get(collection=collection).output.index
        sidecars += [entry["sidecar"] for entry in read_json(index).values()]
    return sidecars


def caption_resources(wildcards):
    """GPU for the caption job only when it serves a model itself."""
    captions = config["captions"]
    return int(captions["captioner"] == "vllm" and not captions["vllm"]["base_url"])


def workflow_file(path):
    """A config path that may name a file shipped with the workflow (resources/...)."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    return str(Path(workflow.basedir) / path)


CAPTION_SETTINGS = {
    **config["captions"],
    "system_prompt": workflow_file(config["captions"]["system_prompt"]),
    "examples": workflow_file(config["captions"]["examples"]),
}


ESRGAN_RUNS = config["esrgan"]


def esrgan_inputs(wildcards):
    run = ESRGAN_RUNS[wildcards.run]
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in run["collections"]],
        "init": weights_path(run["init"]),
    }


CONCEPTOR = config["conceptor"]
FLUX_MODEL = workflow_file(CONCEPTOR["model"])


def conceptor_inputs(wildcards):
    dataset = CONCEPTOR["runs"][wildcards.run]["dataset"]
    return {"dataset": f"datasets/{dataset}", "model": FLUX_MODEL}


def concept_inputs(wildcards):
    run = CONCEPTOR["concepts"][wildcards.concept]["run"]
    lora = [f"{MODELS_DIR}/conceptor-{run}.safetensors"] if run else []
    return {"model": FLUX_MODEL, "lora": lora}


def pick_index(wildcards):
    concept = CONCEPTOR["picks"][wildcards.pick]["concept"]
    return f"results/concepts/{concept}/concepts.json"
