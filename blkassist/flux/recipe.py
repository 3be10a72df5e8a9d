"""A Flux LoRA training recipe: the settings of one run, as validated config.

Defaults live in config/schema.yaml alone (`$defs/flux_recipe`, and each assistant's
`$defs/NAME_recipe` on top of it); this module only names the settings and checks that a
mapping has every one of them, so Python never restates a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from blkassist.config import definition_with_defaults
from blkassist.errors import ConfigError

# Settings that do not change the trained weights (they stay out of the run's digest).
NOT_RECIPE = frozenset(
    {
        "steps",
        "save_every",
        "keep",
        "keep_resumable",
        "gradient_checkpointing",
        "sample_prompts",
        "sample_count",
        "sample_seeds",
        "sample_size",
        "sample_steps",
        "sample_guidance",
        "validation_images",
    }
)


@dataclass(frozen=True)
class Recipe:
    # adapter
    adapter: str  # "lora" or "lokr"
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dropout: float
    lokr_decompose_factor: int
    # optimiser and schedule
    optimizer: str  # "prodigy", "adamw8bit" or "adamw"
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    decouple: bool
    use_bias_correction: bool
    safeguard_warmup: bool
    d0: float
    d_coef: float
    lr_schedule: str  # "constant", "cosine" or "polynomial"
    lr_power: float  # polynomial decay's power
    warmup_steps: int
    gradient_accumulation: int
    max_grad_norm: float | None
    # steps and checkpoints
    steps: int
    save_every: int
    keep: int
    keep_resumable: int
    ema_decay: float
    batch_size: int
    # captions
    caption_dropout: float
    shuffle_tags: bool
    keep_tags: int
    caption_variants: int
    max_sequence_length: int
    # objective
    timestep_sampling: str
    logit_mean: float
    logit_std: float
    mode_scale: float
    resolution_shift: bool
    guidance: float
    # model
    quantize: bool
    gradient_checkpointing: bool
    save_dtype: str
    seed: int
    # what each save writes
    sample_prompts: tuple[str, ...]
    sample_count: int
    sample_seeds: tuple[int, ...]
    sample_size: tuple[int, int]
    sample_steps: int
    sample_guidance: float
    validation_images: int

    def weights_defining(self) -> dict:
        """The settings that decide the trained weights (the run's digest); lr_power only
        with the polynomial schedule (so runs from before it existed keep their digest)."""
        unused = set() if self.lr_schedule == "polynomial" else {"lr_power"}
        return {k: v for k, v in asdict(self).items() if k not in NOT_RECIPE | unused}


# Checkpoint housekeeping and gradient checkpointing only schedule a run: rule params leave
# them out, so changing them reruns nothing.
HOUSEKEEPING = frozenset({"keep", "keep_resumable", "gradient_checkpointing"})


def recipe_params(recipe: dict) -> dict:
    """A run's recipe section as rule params: the settings that define its outputs."""
    return {k: v for k, v in recipe.items() if k not in HOUSEKEEPING}


_TUPLES = {f.name for f in fields(Recipe) if str(f.type).startswith("tuple")}


def recipe_from_config(config: dict, key: str = "recipe") -> Recipe:
    """A Recipe from a complete mapping (a config section whose schema defaults are filled);
    unknown and missing names are errors that name the key."""
    known = [f.name for f in fields(Recipe)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {', '.join(known)})")
    missing = [name for name in known if name not in config]
    if missing:
        raise ConfigError(
            f"{key}: {', '.join(missing)} missing; validate the config against "
            "config/schema.yaml first (it fills every default)."
        )
    values = {k: tuple(v) if k in _TUPLES else v for k, v in config.items()}
    recipe = Recipe(**values)
    if recipe.adapter not in ("lora", "lokr"):
        raise ConfigError(f"{key}.adapter: {recipe.adapter!r} is not 'lora' or 'lokr'")
    return recipe


def schema_recipe(
    kind: str, overrides: dict | None, schema_path: str | Path, key: str | None = None
) -> Recipe:
    """`overrides` validated against the schema's `$defs/KIND_recipe`, defaults filled:
    the recipe a config with these overrides would give (tests, benchmarks, GPU checks)."""
    key = key or f"{kind}.recipe"
    filled = definition_with_defaults(dict(overrides or {}), schema_path, f"{kind}_recipe", key)
    return recipe_from_config(filled, key)


def concept_sequence_length(concept: dict, run_recipe: dict | None, key: str) -> int:
    """A concept's T5 length: the run's (a LoRA learnt embeddings of that length), or the
    concept's own when it agrees; 512 (Flux.1-dev's) for the base model."""
    asked = concept.get("max_sequence_length")
    if run_recipe is None:
        return 512 if asked is None else asked
    trained = run_recipe["max_sequence_length"]
    if asked is not None and asked != trained:
        raise ConfigError(
            f"{key}.max_sequence_length: {asked} differs from its run's recipe "
            f"max_sequence_length {trained}; remove it (the run's is used) or make them equal."
        )
    return trained


def concepts_with_sequence_lengths(conceptor: dict) -> dict:
    """conceptor.concepts, each a copy with its max_sequence_length resolved from its run
    (the config is left as it is); refuses a concept whose run does not exist or whose
    explicit length differs."""
    runs = conceptor["runs"]
    resolved = {}
    for name, concept in conceptor["concepts"].items():
        run = concept["run"]
        if run is not None and run not in runs:
            raise ConfigError(
                f"conceptor.concepts.{name}.run: {run!r} is not a conceptor run "
                f"(runs: {', '.join(runs) or 'none'})"
            )
        recipe = runs[run]["recipe"] if run else None
        key = f"conceptor.concepts.{name}"
        length = concept_sequence_length(concept, recipe, key)
        resolved[name] = {**concept, "max_sequence_length": length}
    return resolved
