"""Conceptor through the real Snakemake engine: training set -> LoRA -> concepts -> pick ->
mural, with the tiny random Flux built offline."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_snakemake, synthetic_corpus, write_config

pytestmark = pytest.mark.slow

RECIPE = {"steps": 4, "save_every": 2, "quantize": False, "gradient_checkpointing": False,
          "sample_size": [64, 64], "sample_steps": 2, "sample_seeds": [0], "sample_count": 1,
          "max_sequence_length": 32, "validation_images": 2}  # fmt: skip


def test_lora_concepts_pick_and_mural(tmp_path):
    config = {
        "corpus": synthetic_corpus(3, 1, 256),
        "datasets": {"small": {"collections": ["ink"], "resolutions": [128, 256],
                               "validation_fraction": 0.25}},
        "conceptor": {
            "model": "resources/flux/tiny.yaml",  # the random tiny Flux: speed, not learning
            "runs": {"ink": {"dataset": "small", "recipe": RECIPE}},
            "concepts": {"towers": {"run": "ink", "prompts": ["two towers, cross-hatched sky",
                                                               {"prompt": "a harbour at dusk",
                                                                "aspect": "16:9"}],
                                    "seeds": [0, 1], "megapixels": 0.01, "steps": 2,
                                    "max_sequence_length": 32}},
            "picks": {"harbour": {"concept": "towers", "prompt": 1, "seed": 1}},
        },
        "murals": {"harbour": {"source": "results/concepts/picks/harbour.png",
                               "model": "lanczos", "scale": 2, "tile": 32}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    kohya_file = "work/models/conceptor-ink.kohya.safetensors"
    run_snakemake(tmp_path, [path], "results/harbour_final.tif", kohya_file)
    lora = load_file(tmp_path / "work/models/conceptor-ink.safetensors")
    assert lora and all(key.startswith("transformer.") for key in lora)
    card = json.loads((tmp_path / "results/conceptor/ink/model_card.json").read_text())
    assert card["recipe"]["rank"] == 32 and card["recipe"]["steps"] == 4
    # The kohya / ComfyUI copy: q, k, v fused block-diagonally, alpha for the fused rank;
    # the same tensors as the chosen checkpoint's own copy.
    kohya = load_file(tmp_path / kohya_file)
    checkpoint_copy = load_file(tmp_path / card["chosen"]["kohya_copy"])
    assert kohya.keys() == checkpoint_copy.keys()
    assert all(torch.equal(v, checkpoint_copy[k]) for k, v in kohya.items())
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    block = "transformer.transformer_blocks.0.attn"
    up, down = kohya[f"{qkv}.lora_up.weight"], kohya[f"{qkv}.lora_down.weight"]
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        rows, columns = slice(32 * part, 32 * part + 32), slice(32 * part, 32 * part + 32)
        assert torch.equal(up[rows, columns], lora[f"{block}.{name}.lora_B.weight"])
        assert torch.equal(down[columns], lora[f"{block}.{name}.lora_A.weight"])
        rest = up[rows].clone()
        rest[:, columns] = 0
        assert not rest.any()  # zero outside its own block
    assert kohya[f"{qkv}.alpha"].item() == 3 * 32
    # Every card and sidecar names the terms of the models it depends on.
    (lora_terms,) = card["licences"]
    assert lora_terms["model"] == "work/models/conceptor-ink.safetensors"
    assert lora_terms["derived_from"][0]["licence"].startswith("none: random weights")
    assert lora_terms["training_data"][0]["collection"] == "ink"
    concepts = json.loads((tmp_path / "results/concepts/towers/concepts.json").read_text())
    assert len(concepts) == 4
    wide = [c for c in concepts if c["prompt"] == "a harbour at dusk"]
    assert all(c["width"] > c["height"] and c["width"] % 16 == 0 for c in wide)
    assert all(c["lora"]["sha256"] for c in concepts)
    assert all(c["licences"][1] == lora_terms for c in concepts)
    pick = json.loads((tmp_path / "results/concepts/picks/harbour.json").read_text())
    assert pick["seed"] == 1 and pick["prompt"] == "a harbour at dusk"
    assert pick["licences"] == concepts[0]["licences"]
    mural = json.loads((tmp_path / "results/harbour_final.provenance.json").read_text())
    assert [r["role"] for r in mural["licences"]] == []  # lanczos: no model
    assert (tmp_path / "results/harbour_final.tif").exists()
    again = run_snakemake(tmp_path, [path], "results/harbour_final.tif")
    assert "Nothing to be done" in again.stdout + again.stderr
