"""Every random generator a training run draws from, saved and restored as one state, so a
resumed run continues exactly as if it had never stopped.

The state is tensors and plain Python values only (numpy's key array is stored as a
tensor), so checkpoints load with `torch.load(..., weights_only=True)`: a checkpoint file
can never run code (see `load_checkpoint`).
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from blkassist.errors import ModelFileError

log = logging.getLogger(__name__)


def rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    np.random.set_state(
        (
            saved["kind"],
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_checkpoint(path: str | Path, device) -> dict:
    """A resume checkpoint, read without running code (weights_only): a file that needs
    more than tensors and plain values (planted, or written by an older version) is refused
    with the fix, never unpickled."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message ends in advice to load unsafely; keep only what it found.
        lines = [line for line in str(error).splitlines() if line.strip()]
        found = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise ModelFileError(
            f"{path}: refused to resume from this checkpoint: it holds objects other than "
            f"tensors and plain values, which would run code when loaded ({found}). It was "
            "not written by this version of the workflow. Fix: delete it (the run resumes "
            "from an earlier checkpoint, or starts again)."
        ) from None
