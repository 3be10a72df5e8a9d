# Input functions of BLK-Stencil: its training sets (rules/stencil.smk), its model,
# LoRAs, asset sets and compositions (rules/stencil_model.smk).
from pathlib import Path

from blkassist.flux.recipe import recipe_params


def stencil_inputs(wildcards):
    """The artist's RGBA asset collections a Stencil set includes, with their captions."""
    included = STENCIL_SETS[wildcards.stencil]["collections"]
    collections = STENCIL["collections"] if included else []
    return {
        "manifests": [f"work/corpus/{c}/manifest.tsv" for c in collections],
        "captions": [f"captions/{c}/index.json" for c in collections],
        "sidecars": caption_sidecars(collections),
    }


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
