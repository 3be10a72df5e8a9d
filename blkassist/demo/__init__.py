"""Demo-only code: what the demo and the tests use in place of an artist's corpus and of
Flux.1-dev weights (the learned ink model and how it is built).

Torch-free at import: the workflow asks `is_demo_model` while it parses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

INK_MODEL_FORMAT = "blkassist-ink-model/1"  # model_card.json "format" of the ink model
WORKFLOW_DIR = Path(__file__).resolve().parents[2]  # the library ships inside the workflow


def shipped_path(path: str | os.PathLike) -> Path:
    """A config path that may name a file shipped with the workflow (resources/...): as
    given where it exists (or is absolute), else under the workflow's folder, as the rules'
    workflow_file resolves it."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return WORKFLOW_DIR / path


def is_demo_model(model: str | os.PathLike) -> bool:
    """A Flux model this workflow made for demos and tests: a random-model spec (.yaml) or
    the learned ink model (a folder whose model card says so). Never an artist's or Black
    Forest Labs' weights, so never worth refining a studio's mural with."""
    from blkassist.flux.single_file import is_single_file_model

    path = shipped_path(model)
    if path.suffix in (".yaml", ".yml"):
        return not is_single_file_model(path)
    card = path / "model_card.json"
    if not card.is_file():
        return False
    try:
        return json.loads(card.read_text()).get("format") == INK_MODEL_FORMAT
    except (OSError, ValueError):
        return False
