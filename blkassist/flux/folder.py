"""A Flux.1-dev diffusers folder checked for completeness without torch: the workflow runs
this preflight while it parses, before any job (blkassist.flux.loader loads the folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from blkassist.errors import ModelFileError

PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
WEIGHT_STEMS = {  # each weighted part's file stem
    "transformer": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}
_FILES = {  # any one of these file sets makes the part complete
    "tokenizer": [("vocab.json", "merges.txt"), ("tokenizer.json",)],
    "tokenizer_2": [("spiece.model",), ("tokenizer.json",)],
    "scheduler": [("scheduler_config.json",)],
}
_WHAT = {
    "transformer": "the Flux transformer",
    "vae": "the autoencoder",
    "text_encoder": "the CLIP text encoder",
    "text_encoder_2": "the T5 text encoder",
    "tokenizer": "the CLIP tokenizer",
    "tokenizer_2": "the T5 tokenizer",
    "scheduler": "the flow-matching scheduler",
}


def describe(part: str) -> str:
    """What a part is, in words ("the T5 text encoder")."""
    return _WHAT[part]


def download_fix(folder) -> str:
    return (
        "Fix: download the complete diffusers folder of Flux.1-dev (gated: accept the licence "
        "on huggingface.co/black-forest-labs/FLUX.1-dev first), e.g. `hf download "
        f"black-forest-labs/FLUX.1-dev --local-dir {folder}`, or point the model setting at a "
        "complete local folder."
    )


def _weights_problem(sub: Path, stem: str) -> str | None:
    single, index = sub / f"{stem}.safetensors", sub / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            return f"{index.name} is not a valid shard index"
        files = [sub / shard for shard in shards]
    elif single.is_file():
        files = [single]
    else:
        return f"{stem}.safetensors (or its sharded index) is missing"
    for path in files:
        if not path.is_file():
            return f"weight shard {path.name} is missing"
        if path.stat().st_size < 1024 and path.read_bytes().startswith(b"version https://git-lfs"):
            return f"{path.name} is a git-lfs pointer, not the weights (run `git lfs pull`)"
    return None


def check_flux_folder(folder: str | os.PathLike) -> Path:
    """Raise ModelFileError naming every missing part, before anything heavy is loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: Flux model folder not found. {download_fix(folder)}")
    problems = []
    if not (folder / "model_index.json").is_file():
        problems.append("model_index.json (the pipeline index) is missing")
    for part in PARTS:
        sub = folder / part
        if not sub.is_dir():
            problems.append(f"{part}/ ({_WHAT[part]}) is missing")
            continue
        if part in WEIGHT_STEMS:
            if not (sub / "config.json").is_file():
                problems.append(f"{part}/config.json ({_WHAT[part]}) is missing")
            problem = _weights_problem(sub, WEIGHT_STEMS[part])
            if problem:
                problems.append(f"{part}/ ({_WHAT[part]}): {problem}")
        elif not any(all((sub / f).is_file() for f in option) for option in _FILES[part]):
            wanted = " or ".join("+".join(option) for option in _FILES[part])
            problems.append(f"{part}/ ({_WHAT[part]}) lacks {wanted}")
    if problems:
        raise ModelFileError(
            f"{folder}: incomplete Flux.1-dev folder: {'; '.join(problems)}. {download_fix(folder)}"
        )
    return folder
