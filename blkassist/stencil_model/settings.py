"""Stencil model settings that the workflow checks when it is parsed: the curriculum, the
transparent VAE's architecture spec and the cross-key checks of `stencil.runs` and asset
LoRAs. Torch-free on purpose: every `snakemake` invocation imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blkassist.errors import ConfigError, ModelFileError

STAGE_LISTS = ("stages/1-singles.txt", "stages/2-pairs.txt", "stages/3-triples.txt")
STAGE_NAMES = ("singles", "+ pairs", "+ triples and extras")


@dataclass(frozen=True)
class Curriculum:
    pairs_from: int
    triples_from: int
    pairs_share: float
    triples_share: float

    @classmethod
    def from_config(cls, settings: dict, steps: int, key: str) -> Curriculum:
        """From a schema-filled `curriculum` mapping; stage order and shares checked."""
        curriculum = cls(**settings)
        if not 0 < curriculum.pairs_from < curriculum.triples_from < steps:
            raise ConfigError(
                f"{key}: stage boundaries must satisfy 0 < pairs_from ({curriculum.pairs_from})"
                f" < triples_from ({curriculum.triples_from}) < recipe.steps ({steps}); "
                "move a boundary or raise steps."
            )
        if curriculum.pairs_share + curriculum.triples_share > 1:
            raise ConfigError(
                f"{key}: pairs_share + triples_share is "
                f"{curriculum.pairs_share + curriculum.triples_share:g}, more than 1; "
                "singles take the rest, so lower one of them."
            )
        return curriculum

    def stage_at(self, step: int) -> int:
        """The stage (0, 1, 2) of the optimiser step that follows `step` steps done."""
        return 0 if step < self.pairs_from else 1 if step < self.triples_from else 2

    def shares(self, stage: int) -> list[float]:
        """Share of the draws per group (singles, pairs, triples and extras) in `stage`."""
        p, t = self.pairs_share, self.triples_share
        return [[1.0], [round(1 - p, 12), p], [round(1 - p - t, 12), p, t]][stage]


@dataclass(frozen=True)
class TransparentVAESpec:
    """Architecture of a transparent VAE (the published one or a tiny one)."""

    encoder_channels: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 256, 256)
    offset_scale: float = 300.0
    # The Flux VAE's input (in [-1, 1]; one value or R, G, B) for clear pixels: assets are
    # fed premultiplied over it. 0 (mid-grey) is the published convention.
    ground: float | tuple[float, float, float] = 0.0
    block_out_channels: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 512)
    attention_levels: tuple[int, ...] = (4, 5, 6)
    layers_per_block: int = 2
    norm_num_groups: int = 4
    attention_head_dim: int = 8
    latent_channels: int = 16
    # The published layers that inject the offset and the latent start at zero, so an
    # untrained adapter leaves a pretrained system as it was; a model trained from scratch
    # learns far faster without that (the tiny one).
    zero_init: bool = True
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (one halving per decoder level)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TransparentVAESpec:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: transparent VAE spec not found.")
        raw = yaml.safe_load(path.read_text()) or {}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        spec = cls(**values)
        if len(spec.encoder_channels) != 8:
            raise ConfigError(f"{path}: encoder_channels needs 8 widths (4 halvings to H/8)")
        if len(spec.block_out_channels) < 4:
            raise ConfigError(f"{path}: block_out_channels needs 4+ levels (latent at H/8)")
        ground = spec.ground if isinstance(spec.ground, tuple) else (spec.ground,)
        if len(ground) not in (1, 3) or not all(-1 <= v <= 1 for v in ground):
            raise ConfigError(f"{path}: ground must be one value or R, G, B, each in [-1, 1]")
        return spec


def check_stencil_runs(stencil: dict, vae_spec: str | Path | None = None) -> None:
    """Cross-key checks of stencil.runs before any job runs: the set exists, the stages
    are in order inside the run's steps, samples fit the transparent VAE of `vae_spec`."""
    if not stencil["runs"]:
        return
    multiple = TransparentVAESpec.from_yaml(vae_spec).size_multiple if vae_spec else 1
    for name, run in stencil["runs"].items():
        key = f"stencil.runs.{name}"
        if run["dataset"] not in stencil["datasets"]:
            raise ConfigError(
                f"{key}.dataset: {run['dataset']!r} is not a set under stencil.datasets "
                f"({', '.join(stencil['datasets']) or 'none'}); add it there."
            )
        Curriculum.from_config(run["curriculum"], run["recipe"]["steps"], f"{key}.curriculum")
        sample_size = run["recipe"]["sample_size"]
        if any(side % multiple for side in sample_size):
            raise ConfigError(
                f"{key}.recipe.sample_size: {sample_size} must be multiples of {multiple} "
                f"for the transparent VAE ({vae_spec})."
            )


def asset_sets_with_lora_files(stencil: dict, models_dir: str) -> dict:
    """stencil.assets, each set a copy whose `stencil:RUN` LoRAs name the run's LoRA file
    (the config is left as it is), refusing an unknown run or a prompt length the LoRA was
    not trained with."""
    resolved = {}
    for set_name, settings in stencil["assets"].items():
        loras = []
        for index, lora in enumerate(settings["loras"]):
            if lora["file"].startswith("stencil:"):
                run = lora["file"].split(":", 1)[1]
                _check_asset_lora(stencil, set_name, index, run)
                lora = {**lora, "file": f"{models_dir}/stencil-{run}.safetensors"}
            loras.append(lora)
        resolved[set_name] = {**settings, "loras": loras}
    return resolved


def _check_asset_lora(stencil: dict, set_name: str, index: int, run: str) -> None:
    settings = stencil["assets"][set_name]
    if run not in stencil["runs"]:
        raise ConfigError(
            f"stencil.assets.{set_name}.loras.{index}.file: {run!r} is not a run under "
            f"stencil.runs ({', '.join(stencil['runs']) or 'none'})."
        )
    trained = stencil["runs"][run]["recipe"]["max_sequence_length"]
    if settings["max_sequence_length"] != trained:
        raise ConfigError(
            f"stencil.assets.{set_name}.max_sequence_length: "
            f"{settings['max_sequence_length']} differs from stencil.runs.{run}'s "
            f"recipe max_sequence_length {trained}; make them equal."
        )
