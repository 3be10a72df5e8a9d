import functools
from pathlib import Path

from blkassist.corpus.collections import MASK_TAG
from blkassist import licences
from blkassist.flux.recipe import recipe_params
from blkassist.fsutil import read_json
from blkassist.gpu_memory import declared_devices, refine_memory_or_reason
from blkassist.plan import (
    estimate,
    memory_table,
    plan_line,
    sr_memory,
    sr_pass_costs,
    with_refinement,
)
from blkassist.probe import header_alpha, header_size
from blkassist.runlock import clear_stale_locks
from blkassist.sr.ncnn import NCNN_MODELS
from blkassist.tiling import plan_mural
from blkassist.workflow_settings import load_workflow_settings

# The one settings layer: the config validated, every section's cross-key checks run
# (before any job) and what the rules derive from it, without writing into the config
# beyond the schema's defaults (the jobs' scripts read their sections from it).
SETTINGS = load_workflow_settings(
    config, Path(workflow.basedir) / "config" / "schema.yaml", workflow.basedir
)

if workflow.is_main_process:
    # A run killed by SIGKILL leaves Snakemake's locks behind; rerunning should just resume.
    for stale in clear_stale_locks():
        print(f"Removed stale Snakemake lock {stale} (its run is no longer alive).")

MURALS = SETTINGS.murals
REFINE = SETTINGS.refine
MAX_SOURCE_PIXELS = config["limits"]["max_source_pixels"]
MODELS_DIR = SETTINGS.models_dir


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


def last_pass(wildcards):
    return len(mural_plan(wildcards.mural).passes)


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
    return SETTINGS.file(path)


CAPTION_SETTINGS = SETTINGS.captions


ESRGAN_RUNS = config["esrgan"]


def esrgan_inputs(wildcards):
    run = ESRGAN_RUNS[wildcards.run]
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in run["collections"]],
        "init": weights_path(run["init"]),
    }


CONCEPTOR = config["conceptor"]
CONCEPTS = SETTINGS.concepts  # each with the prompt length its run's LoRA learnt
FLUX_MODEL = SETTINGS.conceptor_model


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


STENCIL = config["stencil"]
STENCIL_SETS = STENCIL["datasets"]


def stencil_inputs(wildcards):
    """The artist's RGBA asset collections a Stencil set includes, with their captions."""
    included = STENCIL_SETS[wildcards.stencil]["collections"]
    collections = STENCIL["collections"] if included else []
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in collections],
        "captions": [f"captions/{c}/index.json" for c in collections],
        "sidecars": caption_sidecars(collections),
    }


TEXTURE = config["texture"]
TEXTURE_RUNS = TEXTURE["runs"]


def texture_selection(run):
    """What decides the crops; not the caption prompt nor the min_count check: changing
    them must not re-cut the crops (and rebuild the set, and retrain)."""
    dataset = TEXTURE_RUNS[run]["dataset"]
    return {
        k: v
        for k, v in dataset.items()
        if k not in ("system_prompt", "examples", "min_count")
    }


def texture_masks(collections):
    """Artist masks (scan.mask.png) as inputs, so adding or editing one re-selects."""
    masks = []
    for collection in collections:
        folder = Path(COLLECTIONS[collection]["path"])
        if folder.is_dir():
            masks += [str(m) for m in sorted(folder.rglob(f"*{MASK_TAG}.*"))]
    return masks


def texture_inputs(wildcards):
    collections = TEXTURE_RUNS[wildcards.run]["collections"]
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in collections],
        "masks": texture_masks(collections),
    }


# What texture captions come from: "embedded", or the served model.
TEXTURE_CAPTIONER = SETTINGS.texture_captioner


def texture_prompt(wildcards):
    """The texture prompt files, as inputs only when a model reads them: with the
    built-in captioner, editing them must not rebuild the set (and retrain)."""
    if TEXTURE_CAPTIONER == "embedded":
        return {}
    dataset = TEXTURE_RUNS[wildcards.run]["dataset"]
    return {
        "system_prompt": workflow_file(dataset["system_prompt"]),
        "examples": workflow_file(dataset["examples"]),
    }


def texture_dataset_inputs(wildcards):
    """Crops, captions and each caption sidecar (an artist's edit rebuilds the set and
    its review sheet)."""
    index = checkpoints.caption_texture_crops.get(run=wildcards.run).output.index
    return {
        "plan": f"work/texture/{wildcards.run}/crops.json",
        "crops": f"work/texture/{wildcards.run}/crops",
        "index": index,
        "sidecars": [entry["sidecar"] for entry in read_json(index).values()],
    }


TEXTURE_MODEL = SETTINGS.texture_model


def texture_training_inputs(wildcards):
    """The run's own texture crops (datasets/texture-RUN), or the training set it names."""
    run = TEXTURE["runs"][wildcards.run]
    dataset = run["training_set"] or f"texture-{wildcards.run}"
    return {"dataset": f"datasets/{dataset}", "model": TEXTURE_MODEL}


def texture_recipe_params(run):
    """The recipe settings that define the outputs (housekeeping reruns nothing)."""
    return recipe_params(TEXTURE_RUNS[run]["recipe"])


# BLK-Stencil model and compositions (rules/stencil_model.smk).
STENCIL_VAE = STENCIL["vae"]
STENCIL_SHAPES = STENCIL_VAE.get("shapes")
STENCIL_FLUX_MODEL = SETTINGS.stencil_model
STENCIL_VAE_SPEC = SETTINGS.stencil_vae_spec
STENCIL_VAE_WEIGHTS = SETTINGS.stencil_vae_weights
# An asset set's `stencil:RUN` LoRA is that run's file, so generation depends on training.
STENCIL_ASSET_SETS = SETTINGS.stencil_assets
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
    settings = STENCIL_ASSET_SETS[wildcards.stencil_set]
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


# BLK-Stencil style LoRAs by curriculum (rules/stencil_model.smk, train_stencil).
STENCIL_RUNS = STENCIL["runs"]


def stencil_lora_inputs(wildcards):
    run = STENCIL_RUNS[wildcards.stencil_run]
    return {
        "dataset": f"datasets/stencil-{run['dataset']}",
        "model": STENCIL_FLUX_MODEL,
        "vae_spec": STENCIL_VAE_SPEC,
        "vae": STENCIL_VAE_WEIGHTS,
        "layer_lora": [STENCIL["layer_lora"]] if STENCIL["layer_lora"] else [],
    }


def stencil_lora_params(run):
    """What defines the LoRA: the recipe (housekeeping reruns nothing) and the curriculum."""
    return {
        "recipe": recipe_params(STENCIL_RUNS[run]["recipe"]),
        "curriculum": STENCIL_RUNS[run]["curriculum"],
    }


def kohya_loras():
    """The kohya / ComfyUI copies of the LoRAs trained here (rules/models.smk)."""
    return SETTINGS.kohya_loras()
