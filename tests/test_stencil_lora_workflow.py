"""The Stencil style LoRA through the real Snakemake engine: Stencil set -> tiny transparent
VAE -> style LoRA by curriculum -> RGBA assets generated with it (named stencil:RUN); then a
rerun does nothing, also when only checkpoint housekeeping changed."""

from __future__ import annotations

import json

import pytest

from blkassist.probe import sha256_file
from tests.conftest import run_snakemake, write_config

pytestmark = pytest.mark.slow


def test_dataset_vae_lora_assets_then_nothing_to_do(tmp_path):
    recipe = {
        "steps": 6,
        "save_every": 3,
        "warmup_steps": 1,
        "rank": 4,
        "alpha": 4,
        "quantize": False,
        "gradient_checkpointing": False,
        "caption_variants": 2,
        "validation_images": 1,
        "sample_count": 1,
        "sample_seeds": [0],
        "sample_size": [32, 32],
        "sample_steps": 2,
        "max_sequence_length": 32,
    }
    config = {
        "stencil": {
            "model": "resources/flux/tiny.yaml",  # the random tiny Flux: speed, not learning
            "datasets": {"t": {"size": 8, "resolution": 128, "flip": False}},
            "vae": {"train": {"assets": "datasets/stencil-t", "size": 32, "steps": 20,
                              "holdout": 2}},
            "runs": {"r": {"dataset": "t", "recipe": recipe,
                           "curriculum": {"pairs_from": 2, "triples_from": 4}}},
            "assets": {"ink": {"prompts": ["ink cloud"], "seeds": [0], "size": [32, 32],
                               "steps": 2, "max_sequence_length": 32, "augment": False,
                               "loras": [{"file": "stencil:r"}]}},
        },
    }  # fmt: skip
    path = write_config(tmp_path, config)
    target = "results/stencil/assets/ink/assets.json"
    run_snakemake(tmp_path, [path], target, "work/models/stencil-r.kohya.safetensors")
    lora = tmp_path / "work/models/stencil-r.safetensors"
    [asset] = json.loads((tmp_path / target).read_text())
    assert asset["loras"] == [{"file": "work/models/stencil-r.safetensors",
                               "sha256": sha256_file(lora), "scale": 1.0}]  # fmt: skip
    card = json.loads((tmp_path / "results/stencil/r/model_card.json").read_text())
    assert card["run"]["steps"] == 6 and card["chosen"]["sha256"] == sha256_file(lora)
    assert [s["from_step"] for s in card["curriculum"]["stages"]] == [0, 2, 4]
    vae = tmp_path / "work/models/stencil-transparent-vae.pth"
    assert card["transparent_vae"]["sha256"] == sha256_file(vae)
    (terms,) = card["licences"]  # the style LoRA: trained on the Stencil model here
    assert [b["role"] for b in terms["derived_from"]] == ["base model", "transparent VAE"]
    assert asset["licences"][-1] == terms
    assert (tmp_path / "work/models/stencil-r.kohya.safetensors").is_file()
    for name in ("contact_sheet.png", "losses.png"):
        assert (tmp_path / "results/stencil/r" / name).stat().st_size > 0
    log = (tmp_path / "logs/stencil/train_r.log").read_text()
    assert "curriculum stage 2 (+ pairs)" in log and "curriculum stage 3" in log
    # Checkpoint housekeeping only schedules: changing it retrains nothing.
    recipe["keep"] = 3
    path = write_config(tmp_path, config)
    again = run_snakemake(tmp_path, [path], target)
    assert "Nothing to be done" in again.stdout + again.stderr
    # A stage boundary defines the LoRA: moving one retrains it and regenerates the assets.
    config["stencil"]["runs"]["r"]["curriculum"]["triples_from"] = 5
    plan = run_snakemake(tmp_path, [write_config(tmp_path, config)], "-n", target)
    jobs = plan.stdout.split("Job stats")[-1]
    assert "train_stencil" in jobs and "generate_stencil_assets" in jobs
    assert "train_transparent_vae" not in jobs
