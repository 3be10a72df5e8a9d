"""Sidecar captions the artist owns: an edited caption is never overwritten.

A state file records, per image, what we generated (its hash) and from what (image hash,
prompt digest, captioner). A sidecar whose text no longer matches what we wrote, or that
we never wrote, is the artist's: it is kept as it is, always.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from blkassist.fsutil import atomic_path, write_json

STATE_NAME = ".captions-state.json"


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Origin:
    image_sha256: str
    prompt: str
    captioner: str

    def to_dict(self) -> dict:
        return {
            "image_sha256": self.image_sha256,
            "prompt": self.prompt,
            "captioner": self.captioner,
        }


class CaptionStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        state_path = self.folder / STATE_NAME
        self.state: dict[str, dict] = (
            json.loads(state_path.read_text()) if state_path.exists() else {}
        )

    def sidecar(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.txt"

    def status(self, image_id: str, origin: Origin) -> str:
        """'edited' (the artist's; keep), 'current' (up to date) or 'needed'."""
        path = self.sidecar(image_id)
        if not path.exists():
            return "needed"
        record = self.state.get(image_id)
        if record is None:
            return "edited"  # a caption we never wrote
        text_hash = _text_hash(path.read_text())
        if text_hash == record["text_sha256"]:
            return "current" if record["origin"] == origin.to_dict() else "needed"
        if text_hash == record.get("replacing"):
            return "needed"  # a rewrite was interrupted before the new text landed
        return "edited"

    def write(self, image_id: str, text: str, origin: Origin) -> None:
        """Record, then write: a crash in between never makes our text look like the
        artist's, nor the artist's like ours."""
        text = " ".join(text.split())
        path = self.sidecar(image_id)
        record = {"text_sha256": _text_hash(text), "origin": origin.to_dict()}
        if path.exists():
            record["replacing"] = _text_hash(path.read_text())
        self.state[image_id] = record
        self.save()
        with atomic_path(path) as tmp:
            tmp.write_text(text + "\n")
        record.pop("replacing", None)
        self.save()

    def save(self) -> None:
        write_json(self.folder / STATE_NAME, self.state)

    def read(self, image_id: str) -> str:
        return self.sidecar(image_id).read_text().strip()


def read_caption(sidecar: str | Path) -> str:
    """A sidecar's caption as it is now (the artist may have edited it), on one line."""
    return " ".join(Path(sidecar).read_text().split())


def read_captions(indexes) -> dict[str, str]:
    """Image id -> current caption, from caption index files (captions/NAME/index.json)."""
    captions = {}
    for index in indexes:
        for image_id, entry in json.loads(Path(index).read_text()).items():
            captions[image_id] = read_caption(entry["sidecar"])
    return captions
