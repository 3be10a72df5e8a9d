"""The training set as the trainer sees it: samples from a datasets/NAME split, caption
shuffles, bucketed batch order with a two-integer state, and a content-addressed tensor
cache for latents and text embeddings.

Latents and text embeddings are computed once and cached on disk by content hash, so a
rerun (or another recipe on the same data and model) skips the VAE and both text encoders,
and the encoders can leave the GPU during training. Caption shuffling therefore draws from
a fixed pool of `caption_variants` shuffles per caption."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
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


class TrainingData:
    """The train and held-out samples of one run, their cached latents and embeddings,
    and the caption each draw uses."""

    def __init__(self, recipe, components, train_dir, validation_dir, cache: TensorCache):
        self.recipe, self.components, self.cache = recipe, components, cache
        self.device = components.device
        multiple = components.vae_scale_factor * 2
        self.images = read_split(train_dir, multiple)
        held_out = validation_dir and (Path(validation_dir) / "metadata.jsonl").is_file()
        self.held_out = read_split(validation_dir, multiple) if held_out else []
        self.stats: Counter = Counter()

    def fingerprint(self) -> str:
        return data_fingerprint(self.images)

    def sample_prompts(self) -> list[str]:
        """The recipe's sample prompts, or the first distinct held-out (then train) captions."""
        r = self.recipe
        if r.sample_prompts:
            return list(r.sample_prompts)
        prompts = []
        for image in self.held_out + self.images:
            if image.caption not in prompts:
                prompts.append(image.caption)
        return prompts[: r.sample_count]

    # -- cache keys ------------------------------------------------------------------
    def _latent_key(self, image: TrainingImage) -> str:
        vae = self.components.vae
        return content_key(
            "latents", self.components.identity["vae"], vae.dtype, image.sha256, image.bucket
        )

    def _text_key(self, text: str) -> str:
        c = self.components
        parts = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        return content_key(
            "text",
            *(c.identity[part] for part in parts),
            c.text_encoder.dtype,
            self.recipe.max_sequence_length,
            text,
        )

    def variants(self, caption: str) -> list[str]:
        r = self.recipe
        count = r.caption_variants if r.shuffle_tags else 1
        return caption_variants(caption, count, r.keep_tags, r.seed)

    def prepare(self) -> None:
        """Encode what the cache lacks: VAE latent distributions, text embeddings."""
        self.prepare_latents()
        self.prepare_texts()

    @torch.no_grad()
    def prepare_latents(self) -> None:
        c = self.components
        processor = VaeImageProcessor(vae_scale_factor=c.vae_scale_factor * 2)
        for image in self.images + self.held_out:
            key = self._latent_key(image)
            if self.cache.has("latents", key):
                self.stats["latents_reused"] += 1
                continue
            with Image.open(image.path) as pil:
                pixels = processor.preprocess(pil.convert("RGB"))
            pixels = pixels.to(self.device, c.vae.dtype)
            parameters = c.vae.encode(pixels).latent_dist.parameters.float()
            self.cache.save("latents", key, {"parameters": parameters[0]})
            self.stats["latents_encoded"] += 1

    @torch.no_grad()
    def prepare_texts(self) -> None:
        c = self.components
        texts = {""} | set(self.sample_prompts())
        for image in self.images + self.held_out:
            texts.update(self.variants(image.caption))
        missing = sorted(t for t in texts if not self.cache.has("text", self._text_key(t)))
        self.stats["texts_reused"] += len(texts) - len(missing)
        pipe = c.pipeline() if missing else None
        for start in range(0, len(missing), 8):
            batch = missing[start : start + 8]
            embeds, pooled, _ = pipe.encode_prompt(
                batch, prompt_2=None, max_sequence_length=self.recipe.max_sequence_length
            )
            for text, e, p in zip(batch, embeds, pooled, strict=True):
                self.cache.save(
                    "text", self._text_key(text), {"embeds": e.clone(), "pooled": p.clone()}
                )
            self.stats["texts_encoded"] += len(batch)

    # -- what a step reads -------------------------------------------------------------
    def text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        loaded = [self.cache.load("text", self._text_key(t)) for t in texts]
        embeds = torch.stack([t["embeds"] for t in loaded]).to(self.device)
        pooled = torch.stack([t["pooled"] for t in loaded]).to(self.device)
        return embeds, pooled

    def latents(self, images: list[TrainingImage], generator=None) -> torch.Tensor:
        """Scaled latents: drawn from the cached distribution with `generator`, or (None)
        its mean."""
        config = self.components.vae.config
        batch = []
        for image in images:
            parameters = self.cache.load("latents", self._latent_key(image))["parameters"][None]
            dist = DiagonalGaussianDistribution(parameters)
            latent = dist.sample(generator) if generator is not None else dist.mean
            batch.append((latent - config.shift_factor) * config.scaling_factor)
        return torch.cat(batch).to(self.device)

    def caption(self, caption: str, rng: random.Random) -> str:
        """The caption a training draw sees: dropped to "" or one of its shuffles."""
        if rng.random() < self.recipe.caption_dropout:
            return ""
        return rng.choice(self.variants(caption))
