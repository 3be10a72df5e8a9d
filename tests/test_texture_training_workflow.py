"""The texture LoRA through the real Snakemake engine: a training set of the Conceptor
layout built from the synthetic corpus -> train_texture -> a LoRA that loads with
load_lora_weights, a model card, a contact sheet and a loss plot."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from blkassist.flux.loader import load_flux
from tests.conftest import run_snakemake, synthetic_corpus, write_config
from tests.flux_fixtures import TINY_SPEC

pytestmark = pytest.mark.slow

RECIPE = {"steps": 4, "save_every": 2, "warmup_steps": 1, "gradient_accumulation": 2,
          "quantize": False, "gradient_checkpointing": False, "sample_size": [64, 64],
          "sample_steps": 2, "sample_seeds": [0, 1], "sample_count": 2,
          "max_sequence_length": 32, "validation_images": 2}  # fmt: skip


def test_texture_lora_card_sheet_and_plot(tmp_path):
    # training_set: the run trains on a Conceptor-layout set (the texture-crops chain is
    # the demo's and test_texture_workflow's).
    config = {
        "corpus": synthetic_corpus(3, 1, 256),
        "datasets": {"crops": {"collections": ["ink"], "resolutions": [128],
                               "validation_fraction": 0.25, "flip": False}},
        "texture": {"model": "resources/flux/tiny.yaml",  # speed, not learning
                    "runs": {"ink": {"collections": ["ink"], "training_set": "crops",
                                     "recipe": RECIPE}}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    run_snakemake(tmp_path, [path], "results/texture/ink/model_card.json")
    card = json.loads((tmp_path / "results/texture/ink/model_card.json").read_text())
    assert card["recipe"]["optimizer"] == "adamw8bit" and card["recipe"]["alpha"] == 16
    assert card["recipe"]["gradient_accumulation"] == 2 and card["recipe"]["steps"] == 4
    assert card["optimizer"]["used"] == "bitsandbytes.optim.AdamW8bit"
    assert card["guidance"] == {**card["guidance"], "trained_with": 1.0, "sampling_default": 3.5}
    assert card["chosen"]["step"] == 4 and card["chosen"]["weights"] == "ema"
    with Image.open(tmp_path / "results/texture/ink/contact_sheet.png") as sheet:
        assert sheet.size[0] == 2 * 256  # one column per seed
    assert (tmp_path / "results/texture/ink/losses.png").stat().st_size > 1000
    pipe = load_flux(TINY_SPEC).pipeline()
    pipe.load_lora_weights(str(tmp_path / "work/models"), weight_name="texture-ink.safetensors")
    adapter = pipe.transformer.peft_config["default_0"]
    assert (adapter.r, adapter.lora_alpha) == (16, 16)
    assert set(adapter.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert any(
        torch.count_nonzero(p) for n, p in pipe.transformer.named_parameters() if "lora_B" in n
    )
    log = (tmp_path / "logs/texture/ink.log").read_text()
    assert "bitsandbytes.optim.AdamW8bit" in log and "wrote work/models/texture-ink" in log
    again = run_snakemake(tmp_path, [path], "results/texture/ink/model_card.json")
    assert "Nothing to be done" in again.stdout + again.stderr
    # Checkpoint housekeeping only schedules: changing it retrains nothing.
    config["texture"]["runs"]["ink"]["recipe"]["keep"] = 3
    path = write_config(tmp_path, config)
    again = run_snakemake(tmp_path, [path], "results/texture/ink/model_card.json")
    assert "Nothing to be done" in again.stdout + again.stderr


BAD_CONFIGS = {
    "conceptor.concepts.towers.max_sequence_length: 128 differs": {
        "conceptor": {
            "runs": {"ink": {"dataset": "small", "recipe": {"max_sequence_length": 64}}},
            "concepts": {"towers": {"run": "ink", "prompts": ["two towers"],
                                    "max_sequence_length": 128}},
        },
    },
    "texture.runs.ink.training_set: 'crops' is not a training set": {
        "corpus": synthetic_corpus(1, 0, 256),
        "texture": {"runs": {"ink": {"collections": ["ink"], "training_set": "crops"}}},
    },
}  # fmt: skip


@pytest.mark.parametrize("message", list(BAD_CONFIGS))
def test_inconsistent_flux_settings_are_refused_before_any_job(tmp_path, message):
    path = write_config(tmp_path, BAD_CONFIGS[message])
    result = run_snakemake(tmp_path, [path], "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
