# Input functions of the corpus, its captions and the training sets (rules/corpus.smk,
# rules/captions.smk).
from pathlib import Path

from blkassist.fsutil import read_json


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
