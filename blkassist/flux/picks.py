"""The artist's pick of a concept sketch, copied out so a mural can use it as its source
(no torch import: picking is a file copy)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from blkassist.errors import ConfigError
from blkassist.fsutil import atomic_path, write_json


def pick_concept(index: str | os.PathLike, prompt: int, seed: int, image: str, provenance: str):
    """Copy the artist's chosen concept (prompt number, seed) out as a mural source."""
    index = Path(index)
    records = json.loads(index.read_text())
    chosen = [r for r in records if r["image"].startswith(f"{prompt:02d}-") and r["seed"] == seed]
    if not chosen:
        available = sorted({(int(r["image"][:2]), r["seed"]) for r in records})
        raise ConfigError(
            f"conceptor.picks: no concept with prompt {prompt} and seed {seed} in {index}; "
            f"available (prompt, seed): {available}"
        )
    with atomic_path(image) as tmp:
        shutil.copyfile(index.parent / chosen[0]["image"], tmp)
    write_json(provenance, {**chosen[0], "picked_from": str(index)})
