"""Demo-only code: what the demo, the tests and the GPU checks use in place of an artist's
corpus and of Flux.1-dev weights. None of it touches a studio's data.

- synth: the synthetic pen-and-ink artwork; corpus: a synthetic corpus of it;
  training_split: a tiny synthetic training split (tests, GPU checks);
- random_flux and tokenizers: the random Flux of a spec (resources/flux/*.yaml) and its
  generated tokenizers;
- ink_data and ink_model: the learned ink model and how it is built.

Torch-free at import: the workflow asks `declares_demo` while it parses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from blkassist.errors import ConfigError, ModelFileError
from blkassist.fsutil import workflow_file

INK_MODEL_FORMAT = "blkassist-ink-model/1"  # model_card.json "format" of the ink model
DEMO_KEY = "demo"  # `demo: true` in a spec or model card: a demo model (declares_demo)
WORKFLOW_DIR = Path(__file__).resolve().parents[2]  # the library ships inside the workflow


def shipped_path(path: str | os.PathLike) -> Path:
    """A config path resolved as the rules resolve it (fsutil.workflow_file)."""
    return Path(workflow_file(path, WORKFLOW_DIR))


def _declaration(model: str | os.PathLike) -> dict:
    """What a Flux model says of itself: its spec (.yaml) or its folder's model_card.json;
    {} when there is none or it cannot be read."""
    path = shipped_path(model)
    yaml_file = path.suffix in (".yaml", ".yml")
    declaration = path if yaml_file else path / "model_card.json"
    if not declaration.is_file():
        return {}
    try:
        text = declaration.read_text()
        declared = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return declared if isinstance(declared, dict) else {}


def declares_demo(model: str | os.PathLike) -> bool:
    """Whether a Flux model declares itself a demo model: `demo: true` in its spec (.yaml)
    or in its folder's model_card.json (the random specs and the learned ink model do).
    Nothing here asks how a model was made: one that declares nothing is taken for real
    weights (an artist's or Black Forest Labs')."""
    return _declaration(model).get(DEMO_KEY) is True


def random_weights(model: str | os.PathLike) -> bool:
    """Whether a Flux model is a random-model spec (`kind: random`): its weights are drawn
    from a seed, no one's, whatever it declares (its licence record says so)."""
    spec = shipped_path(model).suffix in (".yaml", ".yml")
    return spec and _declaration(model).get("kind") == "random"


def read_spec(path: str | os.PathLike) -> dict:
    """A random-model spec (`kind: random`), read without torch: the workflow checks the
    Flux model settings while it parses."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model spec not found (expected a .yaml spec or a folder).")
    spec = yaml.safe_load(path.read_text()) or {}
    if spec.get("kind") != "random":
        raise ConfigError(f"{path}: kind must be 'random' (a random Flux of the given shape).")
    return spec
