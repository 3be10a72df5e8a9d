"""The training set as the trainer sees it: samples from a datasets/NAME split, caption
shuffles, bucketed batch order with a two-integer state, and a content-addressed tensor
cache for latents and text embeddings."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from blkassist.errors import ConfigError, InputImageError
from blkassist.fsutil import atomic_path
from blkassist.probe import sha256_file


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str
    bucket: tuple[int, int]
    sha256: str


def read_split(split_dir: str | Path, multiple: int = 16) -> list[TrainingImage]:
    """The samples of datasets/NAME/{train,validation} (metadata.jsonl beside the PNGs)."""
    split_dir = Path(split_dir)
    metadata = split_dir / "metadata.jsonl"
    if not metadata.is_file():
        raise ConfigError(f"{metadata}: not found; build the training set first (datasets/NAME).")
    images = []
    for line in metadata.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        path = split_dir / row["file_name"]
        bucket = (int(row["bucket"][0]), int(row["bucket"][1]))
        if not path.is_file():
            raise InputImageError(f"{path}: listed in {metadata} but missing; rebuild the set.")
        with Image.open(path) as image:
            if image.size != bucket:
                raise InputImageError(f"{path}: {image.size} is not its bucket {bucket}.")
        if bucket[0] % multiple or bucket[1] % multiple:
            raise InputImageError(f"{path}: bucket {bucket} is not a multiple of {multiple}.")
        images.append(TrainingImage(path, row["text"], bucket, sha256_file(path)))
    if not images:
        raise ConfigError(f"{metadata}: no samples.")
    return images


def data_fingerprint(images: list[TrainingImage]) -> str:
    rows = sorted((i.sha256, i.caption, i.bucket) for i in images)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def caption_variants(caption: str, count: int, keep: int, seed: int) -> list[str]:
    """The caption, then up to count-1 distinct shuffles of its comma-separated tags with
    the first `keep` in place; deterministic in (caption, seed)."""
    variants = [caption]
    tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
    head, tail = tags[:keep], tags[keep:]
    rng = random.Random(f"{seed}:{caption}")
    for _ in range(count * 4):
        if len(variants) >= count or len(tail) < 2:
            break
        rng.shuffle(tail)
        variant = ", ".join(head + tail)
        if variant not in variants:
            variants.append(variant)
    return variants


class BucketOrder:
    """Batches drawn from one bucket each, reshuffled every epoch from (seed, epoch) alone,
    so the whole data-order state is two integers."""

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, seed: int):
        self.buckets, self.batch_size, self.seed = buckets, batch_size, seed
        self.epoch, self.position = 0, 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"order:{self.seed}:{epoch}")
        groups: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(self.buckets):
            groups.setdefault(bucket, []).append(index)
        batches = []
        for bucket in sorted(groups):
            members = groups[bucket]
            rng.shuffle(members)
            batches += [
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            ]
        rng.shuffle(batches)
        return batches

    def next(self) -> list[int]:
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        batch = self._batches[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._batches = self._plan(self.epoch)


class TensorCache:
    """Safetensors files keyed by a content hash; written atomically, shared by runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path(kind, key))

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with atomic_path(self.path(kind, key)) as tmp:
            save_file(tensors, str(tmp))


def content_key(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()
