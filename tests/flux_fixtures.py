"""Paths and recipes shared by the Flux tests: the checkout's model specs and schema (the
library itself never reads the checkout)."""

from __future__ import annotations

from pathlib import Path

from blkassist.flux.recipe import Recipe, schema_recipe

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
TINY_SPEC = REPO / "resources" / "flux" / "tiny.yaml"
FULL_RANDOM_SPEC = REPO / "resources" / "flux" / "flux1-dev-random.yaml"
OVERFIT_SPEC = REPO / "tests" / "data" / "flux_overfit.yaml"
TINY_VAE_SPEC = REPO / "resources" / "stencil" / "tiny_vae.yaml"
PUBLISHED_VAE_SPEC = REPO / "resources" / "stencil" / "transparent_vae.yaml"

# CPU-sized settings shared by the tests (the schema fills the rest).
SMALL = {
    "quantize": False,
    "gradient_checkpointing": False,
    "max_sequence_length": 32,
    "sample_size": [64, 64],
    "sample_steps": 2,
    "sample_seeds": [0],
    "sample_count": 1,
    "validation_images": 2,
    "steps": 4,
    "save_every": 2,
}


def recipe(kind: str = "conceptor", **overrides) -> Recipe:
    """The recipe a config with SMALL and `overrides` under KIND.runs.RUN.recipe gives."""
    return schema_recipe(kind, {**SMALL, **overrides}, SCHEMA)
