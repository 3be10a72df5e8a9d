# Input functions of the texture runs (rules/texture.smk).
from pathlib import Path

from blkassist.corpus.collections import MASK_TAG
from blkassist.flux.recipe import recipe_params
from blkassist.fsutil import read_json


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


def texture_training_inputs(wildcards):
    """The run's own texture crops (datasets/texture-RUN), or the training set it names."""
    run = TEXTURE["runs"][wildcards.run]
    dataset = run["training_set"] or f"texture-{wildcards.run}"
    return {"dataset": f"datasets/{dataset}", "model": TEXTURE_MODEL}


def texture_recipe_params(run):
    """The recipe settings that define the outputs (housekeeping reruns nothing)."""
    return recipe_params(TEXTURE_RUNS[run]["recipe"])
