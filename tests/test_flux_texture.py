"""The texture LoRA recipe on the tiny random Flux: its learning-rate schedule, gradient
accumulation, 8-bit AdamW, exact resume, and adapters that reload at their trained
strength (alpha != rank)."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
from diffusers import FluxPipeline

from blkassist.demo.training_split import write_demo_split
from blkassist.errors import ConfigError
from blkassist.flux.generate import load_adapter
from blkassist.flux.loader import load_flux
from blkassist.flux.optim import make_schedule
from blkassist.flux.recipe import concept_sequence_length, concepts_with_sequence_lengths
from blkassist.flux.trainer import Batch, FluxLoraTrainer
from tests.flux_fixtures import TINY_SPEC, assert_same_adapter_and_ema, recipe

TEXTURE = {"gradient_accumulation": 2, "warmup_steps": 2, "steps": 6, "save_every": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("texture-data")
    write_demo_split(root / "train", count=4)  # one bucket: batches of any size stack
    write_demo_split(root / "validation", count=1, seed=5)
    return root


def trainer(data, run_dir, cache_dir=None, **overrides) -> FluxLoraTrainer:
    settings = recipe("texture", **{**TEXTURE, **overrides})
    return FluxLoraTrainer(
        settings, load_flux(TINY_SPEC), data / "train", run_dir, data / "validation", cache_dir
    )


def rows(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def expected_lr(step: int, lr: float, warmup: int, steps: int, shape: str) -> float:
    """Linear warm-up from 0, then constant or a half cosine down to 0 at `steps`."""
    if step < warmup:
        return lr * step / warmup
    if shape == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("shape", "warmup", "steps"),
    [("cosine", 500, 10000), ("cosine", 0, 50), ("cosine", 5, 20), ("constant", 4, 12),
     ("constant", 0, 5)],
)  # fmt: skip
def test_schedule_has_the_asked_warmup_and_shape(shape, warmup, steps):
    settings = recipe("texture", lr_schedule=shape, warmup_steps=warmup, steps=steps)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=settings.lr)
    schedule = make_schedule(optimizer, settings)
    seen = []
    for _ in range(steps + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    wanted = [expected_lr(s, settings.lr, warmup, steps, shape) for s in range(steps + 1)]
    assert seen == pytest.approx(wanted, rel=1e-9, abs=1e-15)
    assert max(seen) == pytest.approx(settings.lr)
    if warmup:
        assert seen[0] == 0 and seen[warmup] == pytest.approx(settings.lr)
        assert all(a < b for a, b in itertools.pairwise(seen[: warmup + 1]))
    if shape == "cosine":
        assert seen[-1] == pytest.approx(0, abs=1e-15)
        after = seen[warmup:]
        assert all(a >= b for a, b in itertools.pairwise(after))
        middle = warmup + (steps - warmup) / 2
        if middle.is_integer():
            assert seen[int(middle)] == pytest.approx(settings.lr / 2)


@pytest.mark.parametrize("split", [[4], [2, 2], [1, 1, 1, 1], [1, 3]])
def test_accumulated_gradient_equals_the_large_batch_gradient(data, tmp_path, split):
    """Four samples at fixed noise: one batch of four, or accumulated in pieces of equal
    size, give the same gradient (pieces of unequal size weight samples unequally)."""
    run = trainer(data, tmp_path / "run", batch_size=1)
    drawn = [run.draw_batch() for _ in range(4)]

    def joined(batches):
        return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in Batch.__annotations__))

    def gradient(pieces):
        for p in run.params:
            p.grad = None
        start, batches = 0, []
        for size in pieces:
            batches.append(joined(drawn[start : start + size]))
            start += size
        loss = run.backward(batches)
        return loss, [p.grad.clone() for p in run.params]

    with torch.no_grad():  # a non-zero adapter, so that every LoRA factor gets a gradient
        for p in run.params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    big_loss, big = gradient([4])
    loss, pieces = gradient(split)
    equal = len(set(split)) == 1
    assert any(g.abs().sum() > 0 for g in big)
    pairs = zip(big, pieces, strict=True)
    close = all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in pairs)
    assert close == equal
    assert (loss == pytest.approx(big_loss, rel=1e-5)) == equal


def test_a_step_accumulates_the_asked_batches_and_clips(data, tmp_path):
    run = trainer(data, tmp_path / "run", gradient_accumulation=3, max_grad_norm=1e-6)
    before = run.order.state_dict()
    row = run.train_step()
    after = run.order.state_dict()
    drawn = (after["epoch"] - before["epoch"]) * 4 + after["position"] - before["position"]
    assert drawn == 3 and run.step == 1
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in run.params]))
    assert row["grad_norm"] > 1e-6 and float(norm) == pytest.approx(1e-6, rel=1e-3)


def test_texture_run_uses_8bit_adamw_and_resumes_identically(data, tmp_path):
    cache = tmp_path / "cache"
    big = {"rank": 128}  # LoRA factors of 4096 values: bitsandbytes keeps 8-bit states
    straight = trainer(data, tmp_path / "a", cache, **big)
    assert straight.optimizer_record["used"] == "bitsandbytes.optim.AdamW8bit"
    straight.run()
    states = straight.optimizer.state_dict()["state"].values()
    assert any(
        v.dtype == torch.uint8
        for state in states
        for v in state["__bnb_optimizer_quant_state__"].values()
        if torch.is_tensor(v)
    )
    interrupted = trainer(data, tmp_path / "b", cache, **big)
    save = interrupted.save_checkpoint

    def killed_at_step_6():
        if interrupted.step == 6:  # steps 4-6 are done and logged, not saved
            raise KeyboardInterrupt
        return save()

    interrupted.save_checkpoint = killed_at_step_6
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = trainer(data, tmp_path / "b", cache, **big)
    assert resumed.step == 3
    resumed.run()
    a, b = straight.state_dict(), resumed.state_dict()
    assert_same_adapter_and_ema(a, b)
    assert a["schedule"] == b["schedule"]
    # bitsandbytes keeps 8-bit states and their quantisation maps in nested dicts.
    torch.testing.assert_close(a["optimizer"], b["optimizer"], rtol=0, atol=0)
    kept = [(r["step"], r["loss"], r["lr"]) for r in rows(resumed.run_dir / "losses.csv")]
    assert kept == [(r["step"], r["loss"], r["lr"]) for r in rows(straight.run_dir / "losses.csv")]
    lrs = [float(r["lr"]) for r in rows(straight.run_dir / "losses.csv")]
    wanted = [expected_lr(s, 1e-4, 2, 6, "cosine") for s in range(6)]
    assert lrs == pytest.approx(wanted, rel=1e-5)  # the log keeps 6 digits
    card = straight.model_card(straight.export(tmp_path / "t.safetensors"), {})
    assert card["recipe"]["optimizer"] == "adamw8bit" and card["recipe"]["alpha"] == 16
    assert card["optimizer"]["used"] == "bitsandbytes.optim.AdamW8bit"
    assert card["guidance"]["trained_with"] == 1.0 and card["guidance"]["sampling_default"] == 3.5


def test_8bit_adamw_falls_back_with_the_reason_when_bitsandbytes_cannot_run(
    data, tmp_path, monkeypatch
):
    import blkassist.flux.optim as optim

    monkeypatch.setattr(optim, "_bitsandbytes_problem", lambda device: "no kernels for xyz")
    run = trainer(data, tmp_path / "run", steps=1)
    assert isinstance(run.optimizer, torch.optim.AdamW)
    assert run.optimizer_record == {
        "asked": "adamw8bit",
        "used": "torch.optim.AdamW",
        "fallback_reason": "no kernels for xyz",
    }
    group = run.optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"]) == ((0.9, 0.999), 0.01)


@pytest.mark.parametrize(
    ("adapter", "rank", "alpha"), [("lora", 4, 2), ("lora", 4, 8), ("lora", 8, 8), ("lokr", 4, 2)]
)
def test_reloaded_adapter_gives_the_trained_transformers_output(
    data, tmp_path, adapter, rank, alpha
):
    run = trainer(data, tmp_path / "run", adapter=adapter, rank=rank, alpha=alpha, steps=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fp16-exact weights, large enough to matter
        for param in run.params:
            param.copy_((torch.randn(param.shape, generator=generator) * 0.3).half().float())
    path = run.save_lora(tmp_path / "adapter.safetensors")
    pipe = load_flux(TINY_SPEC).pipeline()
    load_adapter(pipe, path, 1.0)
    batch = run.draw_batch()
    run.transformer.eval()
    with torch.no_grad():
        trained = run.loss(batch)
        original, run.transformer = run.transformer, pipe.transformer
        reloaded = run.loss(batch)
        run.transformer = original
    base_pipe = load_flux(TINY_SPEC).pipeline()
    with torch.no_grad():
        run.transformer = base_pipe.transformer
        base = run.loss(batch)
        run.transformer = original
    assert float(base) != float(trained)
    assert torch.equal(trained, reloaded)
    assert isinstance(pipe, FluxPipeline)


def test_concepts_use_their_runs_sequence_length():
    run = {"max_sequence_length": 64}
    assert concept_sequence_length({"max_sequence_length": None}, run, "c") == 64
    assert concept_sequence_length({"max_sequence_length": 64}, run, "c") == 64
    assert concept_sequence_length({"max_sequence_length": None}, None, "c") == 512
    assert concept_sequence_length({"max_sequence_length": 77}, None, "c") == 77
    with pytest.raises(ConfigError, match=r"c\.max_sequence_length: 128 differs .* 64"):
        concept_sequence_length({"max_sequence_length": 128}, run, "c")

    conceptor = {
        "runs": {"ink": {"recipe": run}},
        "concepts": {"a": {"run": "ink", "max_sequence_length": None},
                     "b": {"run": None, "max_sequence_length": None}},
    }  # fmt: skip
    concepts = concepts_with_sequence_lengths(conceptor)
    assert [c["max_sequence_length"] for c in concepts.values()] == [64, 512]
    assert conceptor["concepts"]["a"]["max_sequence_length"] is None  # the config as it was
    conceptor["concepts"]["c"] = {"run": "inks", "max_sequence_length": None}
    with pytest.raises(ConfigError, match=r"conceptor\.concepts\.c\.run: 'inks' is not"):
        concepts_with_sequence_lengths(conceptor)
