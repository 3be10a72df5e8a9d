"""The Stencil style LoRA: the shared Flux LoRA trainer, fed RGBA assets through the
transparent VAE's offset encoder and drawn by curriculum from a Stencil set's stage lists.

Stages by optimiser step: singles before `pairs_from`; then pairs join at `pairs_share` of
the draws; from `triples_from` to the recipe's last step, triples and extras (clouds,
shapes, the artist's assets) join at `triples_share`; singles take the rest. Which group a
draw comes from is a pure function of (seed, draw number), and each group has its own
bucketed order, so the sampler's whole state is a few integers and a checkpoint resumes
bit-identically, across a stage boundary too.

The latents are the transparent VAE's: the Flux VAE's posterior mean plus its std times the
offset encoder's output (no Gaussian sample), cached by content like every other latent,
keyed by the transparent VAE's weights as well as the Flux VAE's.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blkassist.errors import ConfigError, InputImageError
from blkassist.flux.data import (
    BucketOrder,
    TensorCache,
    TrainingData,
    TrainingImage,
    content_key,
    data_fingerprint,
)
from blkassist.flux.trainer import FluxLoraTrainer
from blkassist.probe import sha256_file
from blkassist.stencil_model.preview import over_checkerboard
from blkassist.stencil_model.settings import STAGE_LISTS, STAGE_NAMES, Curriculum
from blkassist.stencil_model.vae import TransparentVAE, to_flux

log = logging.getLogger(__name__)


def read_stencil_set(dataset_dir: str | Path, multiple: int):
    """The samples of datasets/stencil-NAME (captions from metadata.jsonl, bucket = image
    size) and its curriculum groups: indices of the samples each stage list adds."""
    root = Path(dataset_dir)
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        raise ConfigError(f"{metadata}: not found; build the Stencil set first ({root}).")
    captions = {}
    for line in metadata.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            captions[row["file_name"]] = row["text"]
    lists = []
    for name in STAGE_LISTS:
        path = root / name
        if not path.is_file():
            raise ConfigError(f"{path}: stage list missing; rebuild the Stencil set ({root}).")
        lists.append([f for f in path.read_text().splitlines() if f.strip()])
    images, index, groups, seen = [], {}, [], set()
    for stage, files in enumerate(lists):
        new = [f for f in files if f not in seen]
        if not new:
            raise ConfigError(
                f"{root / STAGE_LISTS[stage]}: stage {stage + 1} ({STAGE_NAMES[stage]}) adds no "
                "images; the curriculum needs every stage (raise the set's size or shares)."
            )
        for file in new:
            if file not in captions:
                raise ConfigError(f"{root / STAGE_LISTS[stage]}: {file} is not in {metadata}.")
            path = root / file
            if not path.is_file():
                raise InputImageError(f"{path}: listed in {root} but missing; rebuild the set.")
            with Image.open(path) as image:
                if image.mode != "RGBA":
                    raise InputImageError(f"{path}: mode {image.mode}, not RGBA; rebuild the set.")
                bucket = image.size
            if bucket[0] % multiple or bucket[1] % multiple:
                raise InputImageError(f"{path}: size {bucket} is not a multiple of {multiple}.")
            index[file] = len(images)
            images.append(TrainingImage(path, captions[file], bucket, sha256_file(path)))
        seen.update(new)
        groups.append([index[f] for f in new])
    return images, groups


class CurriculumOrder:
    """Drop-in for BucketOrder: `next()` gives one bucket's batch of indices into the set,
    from the group the curriculum picks for this draw."""

    def __init__(self, images, groups, curriculum: Curriculum, batch_size, accumulation, seed):
        self.groups, self.curriculum = groups, curriculum
        self.accumulation, self.seed = accumulation, seed
        self.orders = [
            BucketOrder([images[i].bucket for i in group], batch_size, f"{seed}:group{g}")
            for g, group in enumerate(groups)
        ]
        self.draws = 0

    def group_at(self, draw: int) -> int:
        """Which group draw number `draw` takes: a pure function of (seed, draw)."""
        shares = self.curriculum.shares(self.curriculum.stage_at(draw // self.accumulation))
        u = random.Random(f"curriculum:{self.seed}:{draw}").random()
        total = 0.0
        for group, share in enumerate(shares):
            total += share
            if u < total:
                return group
        return max(g for g, share in enumerate(shares) if share > 0)

    def next(self) -> list[int]:
        group = self.group_at(self.draws)
        self.draws += 1
        return [self.groups[group][i] for i in self.orders[group].next()]

    def state_dict(self) -> dict:
        return {"draws": self.draws, "groups": [o.state_dict() for o in self.orders]}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]
        for order, saved in zip(self.orders, state["groups"], strict=True):
            order.load_state_dict(saved)


def rgba_tensor(path: Path) -> torch.Tensor:
    """(1, 4, H, W) straight RGBA in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


class StencilData(TrainingData):
    """A Stencil set's RGBA samples; latents through the transparent encoder."""

    def __init__(self, recipe, components, dataset_dir, vae: TransparentVAE, vae_record, cache):
        self.recipe, self.components, self.cache = recipe, components, cache
        self.device = components.device
        self.vae, self.vae_record = vae, vae_record
        multiple = np.lcm(components.vae_scale_factor * 2, vae.spec.size_multiple)
        self.images, self.groups = read_stencil_set(dataset_dir, int(multiple))
        self.held_out = []
        self.stats: Counter = Counter()

    def fingerprint(self) -> str:
        return content_key(data_fingerprint(self.images), self.groups, self.vae_record["sha256"])

    def _latent_key(self, image: TrainingImage) -> str:
        return content_key(
            "stencil-latents",
            self.components.identity["vae"],
            self.components.vae.dtype,
            self.vae_record["sha256"],
            image.sha256,
            image.bucket,
        )

    @torch.no_grad()
    def encode(self, image: TrainingImage) -> torch.Tensor:
        """The unscaled Flux latent carrying the image's alpha (1, 16, h, w)."""
        rgba = rgba_tensor(image.path).to(self.device, self.vae._dtype)
        return self.vae.encode(self.components.vae, rgba).float()

    def prepare_latents(self) -> None:
        for image in self.images:
            key = self._latent_key(image)
            if self.cache.has("latents", key):
                self.stats["latents_reused"] += 1
                continue
            self.cache.save("latents", key, {"latent": self.encode(image)[0]})
            self.stats["latents_encoded"] += 1

    def latents(self, images, generator=None) -> torch.Tensor:
        """Scaled latents; the offset replaced the Gaussian sample, so no draw is made."""
        batch = [self.cache.load("latents", self._latent_key(i))["latent"][None] for i in images]
        return to_flux(torch.cat(batch), self.components.vae).to(self.device)


class StencilTrainer(FluxLoraTrainer):
    """The shared trainer with Stencil data, the curriculum order and RGBA samples."""

    def __init__(
        self,
        recipe,
        components,
        dataset_dir,
        run_dir,
        *,
        vae: TransparentVAE,
        vae_record: dict,
        curriculum: Curriculum,
        cache_dir=None,
    ):
        self.vae, self.vae_record, self.curriculum = vae, vae_record, curriculum
        multiple = vae.spec.size_multiple
        if any(side % multiple for side in recipe.sample_size):
            raise ConfigError(
                f"sample_size {list(recipe.sample_size)}: the transparent VAE needs sides "
                f"that are multiples of {multiple}"
            )
        self._stage = None
        super().__init__(recipe, components, dataset_dir, run_dir, None, cache_dir)

    def make_data(self, train_dir, validation_dir, cache: TensorCache) -> StencilData:
        return StencilData(
            self.recipe, self.components, train_dir, self.vae, self.vae_record, cache
        )

    def make_order(self) -> CurriculumOrder:
        r = self.recipe
        return CurriculumOrder(
            self.data.images,
            self.data.groups,
            self.curriculum,
            r.batch_size,
            r.gradient_accumulation,
            r.seed,
        )

    def train_step(self) -> dict[str, float]:
        stage = self.curriculum.stage_at(self.step)
        if stage != self._stage:
            log.info(
                "step %d: curriculum stage %d (%s), shares %s",
                self.step,
                stage + 1,
                STAGE_NAMES[stage],
                self.curriculum.shares(stage),
            )
            self._stage = stage
        return {**super().train_step(), "stage": stage + 1}

    def sample_image(self, pipe, seed: int, embeds, pooled):
        """A sample decoded to RGBA by the transparent decoder, shown over a checkerboard."""
        from blkassist.stencil_model.assets import decode_rgba

        packed = self.render_sample(pipe, seed, embeds, pooled, output_type="latent")
        image = decode_rgba(self.components, self.vae, packed, *self.recipe.sample_size)
        return image, over_checkerboard(image)

    def model_card(self, chosen: dict, result: dict, title: str | None = None) -> dict:
        card = super().model_card(chosen, result, title)
        groups = self.data.groups
        card["curriculum"] = {
            **asdict(self.curriculum),
            "steps": self.recipe.steps,
            "stages": [
                {
                    "stage": s + 1,
                    "name": STAGE_NAMES[s],
                    "list": STAGE_LISTS[s],
                    "from_step": (0, self.curriculum.pairs_from, self.curriculum.triples_from)[s],
                    "shares": self.curriculum.shares(s),
                    "images_added": len(groups[s]),
                }
                for s in range(3)
            ],
        }
        card["transparent_vae"] = self.vae_record
        return card


def stencil_training(
    vae_spec: str, vae_weights: str, curriculum: Curriculum, layer_lora: str | None = None
) -> dict:
    """train_run's `loader` and `trainer_factory` for a Stencil run: Flux with the layer
    LoRA fused before any 8-bit quantisation (quantised weights cannot take a fused LoRA),
    then the transparent VAE on the leased device and the StencilTrainer."""
    from blkassist.flux.loader import load_flux, quantize_transformer
    from blkassist.stencil_model.assets import fuse_layer_lora, vae_identity
    from blkassist.stencil_model.vae import load_transparent_vae

    record = vae_identity(vae_spec, vae_weights)  # the file checked before Flux loads
    fused = {}

    def loader(model, device, recipe):
        # Deferred: the layer LoRA is fused on the host, the trainer places the parts.
        components = load_flux(
            model, device, gradient_checkpointing=recipe.gradient_checkpointing, defer=True
        )
        if layer_lora:
            fused.update(fuse_layer_lora(components.pipeline(), layer_lora))
            for part in ("model", *fused["fused_into"]):  # cache keys see the new weights
                identity = components.identity[part]
                components.identity[part] = content_key(identity, fused["sha256"])[:16]
        if recipe.quantize:
            quantize_transformer(components)
        return components

    def trainer_factory(recipe, components, train_dir, run_dir, validation_dir):
        vae = load_transparent_vae(
            vae_spec, vae_weights, components.device, components.dtype, components.vae
        )
        record["bundled_flux_vae"] = vae.bundled_flux_vae
        return StencilTrainer(
            recipe,
            components,
            train_dir,
            run_dir,
            vae=vae,
            vae_record={**record, "layer_lora": fused or None},
            curriculum=curriculum,
        )

    return {"loader": loader, "trainer_factory": trainer_factory}
