"""Concept generation with the tiny random Flux: sizes, LoRA files round trip, LoRA scale,
provenance sidecars, contact sheet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blkassist.demo.training_split import write_demo_split
from blkassist.errors import ConfigError
from blkassist.flux.generate import (
    generate_concepts,
    load_adapter,
    render,
    size_near_megapixel,
)
from blkassist.flux.loader import load_flux
from blkassist.flux.trainer import FluxLoraTrainer
from blkassist.probe import sha256_file
from tests.flux_fixtures import TINY_SPEC, recipe

IMAGE = {
    "seed": 7,
    "width": 64,
    "height": 64,
    "steps": 3,
    "guidance": 3.5,
    "max_sequence_length": 32,
    "prompt": "ink drawing, blue square",
}


def test_sizes_near_one_megapixel():
    assert size_near_megapixel(1) == (1024, 1024)
    assert size_near_megapixel("16:9") == (1360, 768)
    assert size_near_megapixel("2:3") == (832, 1248)
    for aspect in ("21:9", "4x5", 0.5, "1.85"):
        width, height = size_near_megapixel(aspect)
        assert width % 16 == 0 and height % 16 == 0
        assert abs(width * height / 1024**2 - 1) < 0.03
    assert size_near_megapixel(1, megapixels=64 * 64 / 1024**2) == (64, 64)
    for bad in ("wide", "0:1", 0, 50):
        with pytest.raises(ConfigError, match="aspect"):
            size_near_megapixel(bad)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A LoRA file from the trainer, with weights large enough to change the image."""
    root = tmp_path_factory.mktemp("flux-lora")
    write_demo_split(root / "train", count=1)
    settings = recipe("conceptor", steps=1, sample_seeds=[])
    run = FluxLoraTrainer(settings, load_flux(TINY_SPEC), root / "train", root / "run")
    run.run()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in run.params:  # fp16-exact values: the saved file then holds them as is
            param.copy_((torch.randn(param.shape, generator=generator) * 0.3).half().float())
    return run, run.save_lora(root / "concept.safetensors")


def test_lora_file_round_trips_exactly_into_a_fresh_pipeline(lora):
    from peft.utils import get_peft_model_state_dict

    run, path = lora
    pipe = load_flux(TINY_SPEC).pipeline()
    assert load_adapter(pipe, path, 1.0) == sha256_file(path)
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="concept")
    trained = run.adapter_state()
    assert set(loaded) == set(trained) and len(loaded) == 14  # 4 + 3 attention projections
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key
    run.transformer.eval()
    in_training = np.asarray(render(run.components.pipeline(text_encoders=True), **IMAGE))
    reloaded = np.asarray(render(pipe, **IMAGE))
    base = np.asarray(render(load_flux(TINY_SPEC).pipeline(), **IMAGE))
    assert np.array_equal(in_training, reloaded)
    assert not np.array_equal(reloaded, base)


def test_lora_scale_zero_is_the_base_model(lora):
    _, path = lora
    base = np.asarray(render(load_flux(TINY_SPEC).pipeline(), **IMAGE))
    pipe = load_flux(TINY_SPEC).pipeline()
    load_adapter(pipe, path, 0.0)
    assert np.array_equal(np.asarray(render(pipe, **IMAGE)), base)
    pipe.set_adapters(["concept"], adapter_weights=[0.5])
    assert not np.array_equal(np.asarray(render(pipe, **IMAGE)), base)


def test_concepts_have_provenance_sidecars_and_a_contact_sheet(lora, tmp_path):
    _, path = lora
    components = load_flux(TINY_SPEC)
    prompts = ["ink drawing, red circle", {"prompt": "ochre stripes, wide", "aspect": "2:1"}]
    records = generate_concepts(
        components,
        prompts,
        tmp_path / "out",
        seeds=(1, 2),
        megapixels=64 * 64 / 1024**2,
        steps=2,
        guidance=4.0,
        lora=path,
        lora_scale=0.8,
        max_sequence_length=32,
    )
    assert len(records) == 4
    files = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert files == [
        "00-ink-drawing-red-circle-seed1.png",
        "00-ink-drawing-red-circle-seed2.png",
        "01-ochre-stripes-wide-seed1.png",
        "01-ochre-stripes-wide-seed2.png",
        "contact_sheet.png",
    ]
    with Image.open(tmp_path / "out" / "01-ochre-stripes-wide-seed2.png") as image:
        assert image.size == (96, 48)
    sidecar = json.loads((tmp_path / "out" / "01-ochre-stripes-wide-seed2.json").read_text())
    assert sidecar["prompt"] == "ochre stripes, wide" and sidecar["seed"] == 2
    assert (sidecar["width"], sidecar["height"], sidecar["steps"]) == (96, 48, 2)
    assert sidecar["guidance"] == 4.0
    assert sidecar["lora"] == {"file": str(path), "sha256": sha256_file(path), "scale": 0.8}
    assert sidecar["model"]["identity"] == components.identity["model"]
    assert {"torch", "diffusers", "peft"} <= set(sidecar["versions"])
    assert not getattr(components.transformer, "peft_config", {})  # the LoRA was removed
    # The sidecar is enough to regenerate the image.
    pipe = components.pipeline()
    load_adapter(pipe, sidecar["lora"]["file"], sidecar["lora"]["scale"])
    again = render(
        pipe,
        seed=2,
        width=96,
        height=48,
        steps=2,
        guidance=4.0,
        prompt=sidecar["prompt"],
        max_sequence_length=32,
    )
    with Image.open(tmp_path / "out" / sidecar["image"]) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(again))
