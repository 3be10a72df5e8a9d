"""BLK-Stencil through the real Snakemake engine: RGBA shapes -> tiny transparent VAE ->
RGBA assets from the tiny Flux -> a layered composition, which a mural can use as its
source; then a rerun does nothing."""

from __future__ import annotations

import json
import zipfile

import pytest
from PIL import Image

from tests.conftest import run_snakemake, write_config

pytestmark = pytest.mark.slow


def test_assets_composition_and_mural_then_nothing_to_do(tmp_path):
    Image.new("RGB", (96, 64), (235, 228, 210)).save(tmp_path / "paper.png")
    config = {
        "stencil": {
            "model": "resources/flux/tiny.yaml",  # the random tiny Flux: speed, not learning
            "vae": {
                "shapes": {"path": "shapes", "count": 10, "size": 32},
                "train": {"assets": "shapes", "size": 32, "steps": 20, "holdout": 2},
            },
            "assets": {"ink": {"prompts": ["ink cloud", {"prompt": "cube", "role": "MG"}],
                               "seeds": [0], "size": [32, 32], "steps": 2,
                               "max_sequence_length": 32, "augment": False}},
        },
        "compositions": {"scene": {"background": "paper.png", "elements": [
            {"set": "ink", "prompt": 1, "seed": 0, "role": "MG", "x": 0.3, "opacity": 0.7},
            {"set": "ink", "prompt": 0, "seed": 0, "role": "FG", "x": 0.7, "scale": 1.5},
        ]}},
        "murals": {"scene": {"source": "results/compositions/scene.png", "model": "lanczos",
                             "scale": 2, "tile": 32}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    target = "results/compositions/scene.png"
    run_snakemake(tmp_path, [path], target)
    card = json.loads((tmp_path / "results/stencil/vae/model_card.json").read_text())
    assert card["training"]["steps"] == 20 and card["assets"]["count"] == 10
    assert 0 <= card["round_trip"]["held_out"]["alpha_mae"] <= 1
    assets = json.loads((tmp_path / "results/stencil/assets/ink/assets.json").read_text())
    assert [a["role"] for a in assets] == ["FG", "MG"]
    assert all(
        a["transparent_vae"]["weights"].endswith("stencil-transparent-vae.pth") for a in assets
    )
    # The terms of every model behind them: the VAE trained here, the assets, the composition.
    (vae_terms,) = card["licences"]
    assert vae_terms["role"] == "transparent VAE" and vae_terms["licence"].startswith(
        "trained here: derivative of resources/flux/tiny.yaml"
    )
    assert all(a["licences"][-1] == vae_terms for a in assets)
    composition = json.loads((tmp_path / "results/compositions/scene.json").read_text())
    assert composition["licences"] == assets[0]["licences"]
    with zipfile.ZipFile(tmp_path / "results/compositions/scene.ora") as archive:
        assert b'name="MG"' in archive.read("stack.xml")
    assert (tmp_path / "results/compositions/scene.psd").stat().st_size > 0
    with Image.open(tmp_path / "results/compositions/scene.png") as flat:
        assert flat.size == (96, 64)
    log = (tmp_path / "logs/stencil/train_transparent_vae.log").read_text()
    assert "round trip on 2 held-out assets" in log
    # Threads only schedule: a rerun with other thread counts redoes nothing.
    again = run_snakemake(tmp_path, [path], target, "--set-threads", "train_transparent_vae=1")
    assert "Nothing to be done" in again.stdout + again.stderr
    # The flattened composition is a mural source the workflow knows it makes.
    plan = run_snakemake(tmp_path, [path], "-n", "results/scene_final.tif")
    assert "probe_source" in plan.stdout and "compose" not in plan.stdout.split("Job stats")[-1]
