import functools
from dataclasses import asdict
from pathlib import Path

from blkassist.config import mural_settings, validate_config
from blkassist.fsutil import read_json
from blkassist.probe import header_size
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
    made |= {f"results/compositions/{name}.png" for name in config["compositions"]}
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


def batch_markers(mural, step):
    plan = mural_plan(mural).passes[step - 1]
    return [
        f"work/{mural}/pass{step}/batch-{batch}.done"
        for batch in range(plan.batch_count)
    ]


def allocation_inputs(wildcards):
    """A pass reads the previous canvas, which is complete once all its batches are."""
    step = int(wildcards.step)
    if step == 1:
        return {"canvas": f"work/{wildcards.mural}/canvas0.zarr"}
    return {
        "canvas": f"work/{wildcards.mural}/canvas{step - 1}.json",
        "batches": batch_markers(wildcards.mural, step - 1),
    }


def final_batches(wildcards):
    return batch_markers(wildcards.mural, len(mural_plan(wildcards.mural).passes))


def final_canvas(wildcards):
    return (
        f"work/{wildcards.mural}/canvas{len(mural_plan(wildcards.mural).passes)}.json"
    )


def weights_path(model):
    """The .pth behind a model name: a path, a converted package model or a fine-tune run."""
    if model.endswith(".pth"):
        return model
    if model.startswith("esrgan:"):
        return f"{MODELS_DIR}/esrgan-{model.removeprefix('esrgan:')}.pth"
    return f"{MODELS_DIR}/{model}.pth"


def model_weights(wildcards):
    model = MURALS[wildcards.mural].model
    return [] if model == "lanczos" else weights_path(model)


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


# BLK-Stencil model and compositions (rules/stencil_model.smk).
STENCIL = config["stencil"]
STENCIL_VAE = STENCIL["vae"]
STENCIL_SHAPES = STENCIL_VAE.get("shapes")
STENCIL_FLUX_MODEL = workflow_file(STENCIL["model"])
STENCIL_VAE_SPEC = workflow_file(STENCIL_VAE["spec"])
STENCIL_VAE_WEIGHTS = (
    STENCIL_VAE["weights"] or f"{MODELS_DIR}/stencil-transparent-vae.pth"
)
STENCIL_SETS = STENCIL["assets"]
COMPOSITIONS = config["compositions"]


def stencil_training_assets(wildcards):
    """The RGBA folder as an input: drawn by a rule, a dataset rule's output, or there
    already (else the training job reports it missing)."""
    folder = STENCIL_VAE["train"]["assets"]
    made_here = (
        STENCIL_SHAPES and folder == STENCIL_SHAPES["path"]
    ) or folder.startswith("datasets/")
    return folder if made_here or Path(folder).is_dir() else []


def stencil_asset_inputs(wildcards):
    settings = STENCIL_SETS[wildcards.stencil_set]
    return {
        "model": STENCIL_FLUX_MODEL,
        "vae_spec": STENCIL_VAE_SPEC,
        "vae": STENCIL_VAE_WEIGHTS,
        "layer_lora": [STENCIL["layer_lora"]] if STENCIL["layer_lora"] else [],
        "loras": [lora["file"] for lora in settings["loras"]],
    }


def composition_elements(name):
    """Elements with each set reference resolved to that set's index file."""
    elements = []
    for element in COMPOSITIONS[name]["elements"]:
        element = dict(element)
        if "set" in element:
            element["index"] = f"results/stencil/assets/{element['set']}/assets.json"
        elements.append(element)
    return elements


def composition_inputs(wildcards):
    elements = composition_elements(wildcards.composition)
    return {
        "background": COMPOSITIONS[wildcards.composition]["background"],
        "assets": sorted({e.get("index") or e["image"] for e in elements}),
    }
