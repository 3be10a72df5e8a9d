"""BLK-Stencil on the learned ink Flux (resources/flux/ink): the transparent VAE's spec fits
the ink VAE it is trained through, and the demo's transparent VAE and RGBA assets do what
they are for (measured on the demo's own outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from blkassist.flux.loader import load_flux
from blkassist.stencil_model.settings import TransparentVAESpec
from blkassist.stencil_model.shapes import write_ink_shapes
from blkassist.stencil_model.train_vae import read_rgba_folder
from blkassist.stencil_model.vae import TransparentVAE
from tests.conftest import REPO
from tests.flux_fixtures import TINY_SPEC, TINY_VAE_SPEC

INK_MODEL = REPO / "resources" / "flux" / "ink"
INK_VAE_SPEC = REPO / "resources" / "stencil" / "ink_vae.yaml"
DEMO_CONFIG = REPO / "config" / "config.yaml"


@pytest.mark.parametrize(
    "model, spec", [(TINY_SPEC, TINY_VAE_SPEC), (INK_MODEL, INK_VAE_SPEC)], ids=["tiny", "ink"]
)
def test_offset_scale_follows_the_flux_vae_posterior_std(model, spec, tmp_path):
    """offset_scale * (median posterior std on ink shapes fed as the spec feeds them) is
    about 1: a unit of the offset encoder's output moves the latent by about one unit on
    every Flux VAE. Measured: the tiny random VAE's std is ~1.0 (scale 1); the learned ink
    VAE's ~0.016 (its KL weight is 1e-7, like Flux.1-dev's confident posterior; scale 64)."""
    torch.manual_seed(0)
    write_ink_shapes(tmp_path, count=24, size=64, seed=5)
    images, _ = read_rgba_folder(tmp_path, 64)
    vae_spec = TransparentVAESpec.from_yaml(spec)
    flux_vae = load_flux(model).vae
    with torch.no_grad():
        feed = TransparentVAE(vae_spec).flux_feed(images)
        std = float(flux_vae.encode(feed).latent_dist.std.median())
    assert 0.5 <= vae_spec.offset_scale * std <= 2.0, (vae_spec.offset_scale, std)


def test_ink_vae_spec_feeds_clear_pixels_as_white_paper():
    """Clear pixels reach the ink VAE as white, the paper it knows (the published grey is out
    of its distribution: it reconstructs a grey ground ~2x worse), and the demo uses it."""
    spec = TransparentVAESpec.from_yaml(INK_VAE_SPEC)
    assert spec.ground == 1.0
    assert TransparentVAESpec.from_yaml(TINY_VAE_SPEC).ground == 0.0  # published convention
    demo = yaml.safe_load(DEMO_CONFIG.read_text())["stencil"]
    assert demo["vae"]["spec"] == "resources/stencil/ink_vae.yaml"
    assert demo.get("model", "resources/flux/ink") == "resources/flux/ink"


def clear_with_opaque_ink(profile: dict) -> bool:
    """An RGBA asset as it should be (blkassist.stencil_model.assets.alpha_profile): its
    border band mostly clear, something opaque (not an all-clear image), and what the model
    drew as ink strokes opaque."""
    return (
        profile["border_clear"] >= 0.75
        and profile["opaque"] >= 0.05
        and profile["ink_share"] > 0
        and profile["ink_alpha"] >= 0.9
    )


def test_demo_transparent_vae_and_assets_on_the_ink_model(demo_run):
    """The demo's transparent VAE, trained through the ink VAE, gives alpha and colour back
    on held-out assets (issue 19's targets; through the random tiny VAE the same recipe
    reached 0.046 and 0.087), and its RGBA assets have clear backgrounds and opaque strokes.
    Measured (2026-12-07, 400 steps at lr 0.006): held-out alpha 0.026, colour 0.045; assets
    border clear 0.82-0.94, opaque 0.21-0.24, stroke alpha 0.96-1.0. The random tiny model's assets
    (test_stencil_model) are all clear: border clear 0.77, opaque 0.0, stroke alpha 0.09."""
    card = json.loads((demo_run / "results/stencil/vae/model_card.json").read_text())
    held = card["round_trip"]["held_out"]
    assert card["spec_file"].endswith("resources/stencil/ink_vae.yaml")
    assert held["alpha_mae"] <= 0.03 and held["colour_mae_covered"] <= 0.05, held
    assert card["alpha_ok"]
    folder = demo_run / "results/stencil/assets/ink"
    records = json.loads((folder / "assets.json").read_text())
    assert len(records) == 4 and all(r["width"] == r["height"] == 128 for r in records)
    for record in records:
        assert clear_with_opaque_ink(record["alpha"]), (record["image"], record["alpha"])
    assert np.mean([r["alpha"]["border_clear"] for r in records]) >= 0.8
