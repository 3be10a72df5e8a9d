"""Flux LoRA training on CPU with the tiny random Flux: steps, overfitting, exact resume,
caches, LoKr, an 8-bit base."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from blkassist.demo.training_split import write_demo_split
from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.data import BucketOrder, caption_variants
from blkassist.flux.generate import load_adapter
from blkassist.flux.loader import load_flux
from blkassist.flux.recipe import recipe_from_config
from blkassist.flux.trainer import FluxLoraTrainer
from blkassist.progress import ProgressSettings
from tests.flux_fixtures import (
    SCHEMA,
    TINY_SPEC,
    assert_same_adapter_and_ema,
    plant_code_running_checkpoint,
    recipe,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-data")
    write_demo_split(root / "train", count=3, buckets=((64, 64), (96, 64)))
    write_demo_split(root / "validation", count=1, seed=5)
    return root


def trainer(data, run_dir, cache_dir=None, components=None, **overrides) -> FluxLoraTrainer:
    settings = recipe("conceptor", **overrides)
    components = components or load_flux(
        TINY_SPEC,
        quantize=settings.quantize,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    return FluxLoraTrainer(
        settings, components, data / "train", run_dir, data / "validation", cache_dir
    )


def rows(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_steps_write_checkpoints_logs_samples_and_a_model_card(data, tmp_path, caplog):
    run = trainer(data, tmp_path / "run", keep=1)
    before = [p.detach().clone() for p in run.params]
    with caplog.at_level("INFO", logger="blkassist.progress"):
        result = run.run(progress=ProgressSettings(every_steps=3, every_seconds=1e9), label="c")
    assert result["steps"] == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "blkassist.progress"]
    # the first step, every 3rd, the last: step/total, loss, lr, speed, ETA
    assert [line.split(",")[0] for line in lines] == [
        "c: step 1/4 (25.0%)",
        "c: step 3/4 (75.0%)",
        "c: step 4/4 (100.0%)",
    ]
    pattern = r"loss [\d.e+-]+( \(mean of 2\))?, lr [\d.e+-]+, [\d.e+-]+ steps/s, ETA \d+s$"
    assert all(re.search(pattern, line) for line in lines), lines
    assert "(mean of 2)" in lines[1] and lines[-1].endswith("ETA 0s")
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    losses = rows(run.run_dir / "losses.csv")
    assert [int(r["step"]) for r in losses] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in losses)
    assert [r["step"] for r in rows(run.run_dir / "validation.csv")] == ["0"] * 2 + ["2"] * 2 + [
        "4"
    ] * 2
    assert (run.run_dir / "losses.png").stat().st_size > 1000
    [checkpoint] = run.checkpoints()  # keep=1 pruned step 2
    assert checkpoint.name == "step-00000004"
    for name in (
        "state.pt",
        "lora.safetensors",
        "lora_ema.safetensors",
        "contact_sheet.png",
        "samples/p0-seed0.png",
    ):
        assert (checkpoint / name).is_file(), name
    chosen = run.export(tmp_path / "concept.safetensors")
    assert chosen["step"] == 4 and chosen["weights"] == "ema"
    card = run.model_card(chosen, result)
    json.dumps(card)
    assert card["recipe"]["rank"] == 32 and len(card["data"]["images"]) == 3
    assert card["data"]["images"][0]["sha256"] and card["base"]["identity"]
    with pytest.raises(ConfigError, match="step 2"):
        run.export(tmp_path / "old.safetensors", step=2)


def test_one_image_overfit_lowers_the_loss(tmp_path):
    write_demo_split(tmp_path / "one" / "train", count=1)
    settings = recipe(
        steps=100, save_every=100, caption_dropout=0.0, shuffle_tags=False, sample_seeds=[]
    )
    run = FluxLoraTrainer(
        settings, load_flux(TINY_SPEC), tmp_path / "one" / "train", tmp_path / "run"
    )
    run.run()
    validation = {
        (r["step"], r["weights"]): float(r["loss"]) for r in rows(run.run_dir / "validation.csv")
    }
    assert validation[("100", "live")] < 0.9 * validation[("0", "live")]
    assert validation[("100", "ema")] < 0.9 * validation[("0", "ema")]


def test_killed_run_resumes_with_identical_state(data, tmp_path):
    cache = tmp_path / "cache"
    straight = trainer(data, tmp_path / "a", cache)
    straight.run()
    interrupted = trainer(data, tmp_path / "b", cache)
    save = interrupted.save_checkpoint

    def killed_at_step_4():
        if interrupted.step == 4:  # steps 3 and 4 are done and logged, not saved
            raise KeyboardInterrupt
        return save()

    interrupted.save_checkpoint = killed_at_step_4
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    assert len(rows(interrupted.run_dir / "losses.csv")) == 4
    resumed = trainer(data, tmp_path / "b", cache)
    assert resumed.resumed_from is not None and resumed.step == 2
    resumed.run()
    a, b = straight.state_dict(), resumed.state_dict()
    assert_same_adapter_and_ema(a, b)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            other = b["optimizer"]["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other
    assert a["order"] == b["order"] and torch.equal(a["generator"], b["generator"])

    def logged(run):
        losses = [(r["step"], r["loss"]) for r in rows(run.run_dir / "losses.csv")]
        return losses, rows(run.run_dir / "validation.csv")

    assert logged(straight) == logged(resumed)  # the lost steps' rows were dropped


def test_a_planted_code_running_checkpoint_is_refused_not_run(data, tmp_path):
    run = trainer(data, tmp_path / "run", tmp_path / "cache", steps=2, save_every=2)
    run.run()
    marker = tmp_path / "code-ran"
    plant_code_running_checkpoint(run.checkpoints()[-1] / "state.pt", marker)
    with pytest.raises(ModelFileError, match=r"refused to resume.*delete it"):
        trainer(data, tmp_path / "run", tmp_path / "cache", steps=2, save_every=2)
    assert not marker.exists()


def test_cached_latents_and_text_embeddings_are_reused(data, tmp_path):
    first = trainer(data, tmp_path / "run", tmp_path / "cache")
    assert first.cache_stats["latents_encoded"] == 4 and first.cache_stats["texts_encoded"] > 4
    components = load_flux(TINY_SPEC)
    calls = {"vae": 0, "t5": 0}
    vae_encode, t5_forward = components.vae.encode, components.text_encoder_2.forward

    def counting(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapped

    components.vae.encode = counting("vae", vae_encode)
    components.text_encoder_2.forward = counting("t5", t5_forward)
    again = trainer(data, tmp_path / "other-run", tmp_path / "cache", components)
    assert calls == {"vae": 0, "t5": 0}
    assert again.cache_stats["latents_reused"] == 4 and again.cache_stats["texts_encoded"] == 0
    assert again.run(stop_after=1)["steps"] == 1


def test_lokr_trains_and_its_file_loads(data, tmp_path):
    run = trainer(data, tmp_path / "run", adapter="lokr", steps=1, sample_seeds=[])
    before = [p.detach().clone() for p in run.params]
    run.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    path = run.save_lora(tmp_path / "lokr.safetensors")
    pipe = load_flux(TINY_SPEC).pipeline()
    load_adapter(pipe, path, 1.0)
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="concept")
    trained = run.adapter_state()
    assert set(loaded) == set(trained) and all(".lokr_" in k for k in loaded)
    for key, value in trained.items():
        assert torch.equal(loaded[key], value.half().float()), key


def test_8bit_base_with_gradient_checkpointing_trains(data, tmp_path):
    from optimum.quanto.nn import QLinear

    run = trainer(
        data, tmp_path / "run", quantize=True, gradient_checkpointing=True, steps=2, sample_seeds=[]
    )
    base = run.transformer.transformer_blocks[0].attn.to_q.base_layer
    assert isinstance(base, QLinear)
    before = [p.detach().clone() for p in run.params]
    run.run()
    assert all(p.dtype == torch.float32 for p in run.params)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    assert all(float(r["loss"]) < 10 for r in rows(run.run_dir / "losses.csv"))


def test_caption_shuffles_keep_the_first_tag():
    variants = caption_variants("ink drawing, red circle, paper, bold", 8, 1, seed=0)
    assert variants[0] == "ink drawing, red circle, paper, bold"
    assert len(variants) == 6 and len(set(variants)) == 6  # 3! orders of the other tags
    assert all(v.startswith("ink drawing, ") for v in variants)
    assert caption_variants("a single tag", 8, 1, seed=0) == ["a single tag"]


def test_bucket_order_batches_one_bucket_and_restores():
    buckets = [(64, 64), (96, 64), (64, 64), (96, 64), (64, 64)]
    order = BucketOrder(buckets, batch_size=2, seed=3)
    drawn = [order.next() for _ in range(7)]
    assert all(len({buckets[i] for i in batch}) == 1 for batch in drawn)
    assert sorted(i for batch in drawn[:3] for i in batch) == [0, 1, 2, 3, 4]
    state = order.state_dict()
    ahead = [order.next() for _ in range(4)]
    again = BucketOrder(buckets, batch_size=2, seed=3)
    again.load_state_dict(state)
    assert [again.next() for _ in range(4)] == ahead


def test_recipe_defaults_come_from_the_schema_and_bad_keys_are_named():
    from dataclasses import asdict

    from blkassist.flux.recipe import schema_recipe

    conceptor = schema_recipe("conceptor", {"rank": 16, "target_modules": ["to_q"]}, SCHEMA)
    assert conceptor.rank == 16 and conceptor.target_modules == ("to_q",)
    assert (conceptor.alpha, conceptor.optimizer, conceptor.d_coef, conceptor.steps) == (
        32,
        "prodigy",
        2,
        6000,
    )
    assert (conceptor.lr_schedule, conceptor.gradient_accumulation) == ("constant", 1)
    texture = schema_recipe("texture", {}, SCHEMA)
    assert (texture.rank, texture.alpha, texture.dropout) == (16, 16, 0)
    assert texture.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert (texture.optimizer, texture.lr, texture.betas, texture.weight_decay) == (
        "adamw8bit",
        1e-4,
        (0.9, 0.999),
        0.01,
    )
    assert (texture.lr_schedule, texture.warmup_steps, texture.steps) == ("cosine", 500, 10000)
    assert (texture.gradient_accumulation, texture.max_grad_norm) == (8, 1.0)
    with pytest.raises(ConfigError, match=r"conceptor\.recipe.*rnak"):
        schema_recipe("conceptor", {"rnak": 16}, SCHEMA)
    with pytest.raises(ConfigError, match=r"texture\.recipe\.optimizer"):
        schema_recipe("texture", {"optimizer": "sgd"}, SCHEMA)
    with pytest.raises(ConfigError, match=r"run\.rnak"):
        recipe_from_config({**asdict(texture), "rnak": 1}, "run")
    incomplete = asdict(texture)
    del incomplete["warmup_steps"]
    with pytest.raises(ConfigError, match="warmup_steps missing"):
        recipe_from_config(incomplete, "run")
