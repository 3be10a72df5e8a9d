"""The Stencil style LoRA on CPU with the tiny Flux and tiny transparent VAE: curriculum
stage switching and shares, RGBA latents through the offset encoder, bit-identical resume
across a stage boundary, RGBA samples, the polynomial schedule and config errors."""

from __future__ import annotations

import csv
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blkassist.config import validate_config
from blkassist.errors import ConfigError
from blkassist.flux.loader import load_flux
from blkassist.flux.optim import make_schedule
from blkassist.stencil.dataset import build_stencil_dataset
from blkassist.stencil_model.curriculum import (
    CurriculumOrder,
    StencilTrainer,
    read_stencil_set,
    rgba_tensor,
)
from blkassist.stencil_model.settings import (
    Curriculum,
    TransparentVAESpec,
    asset_sets_with_lora_files,
    check_stencil_runs,
)
from blkassist.stencil_model.vae import TransparentVAE, pad_rgb
from tests.flux_fixtures import (
    REPO,
    SCHEMA,
    SMALL,
    TINY_SPEC,
    assert_same_adapter_and_ema,
    random_lora_file,
    recipe,
)

TINY_VAE_SPEC = REPO / "resources" / "stencil" / "tiny_vae.yaml"


def stencil_config(stencil: dict) -> dict:
    config = {"stencil": stencil}
    validate_config(config, SCHEMA)
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A real (tiny) Stencil set from the dataset builder: every category, 64-px buckets."""
    config = stencil_config({"datasets": {"t": {"size": 8, "resolution": 128, "flip": False}}})
    settings = config["stencil"]["datasets"]["t"]
    out = tmp_path_factory.mktemp("stencil") / "stencil-t"
    build_stencil_dataset("t", settings, config["stencil"]["synthetic"], [], str(out))
    return out


def listed(dataset: Path, name: str) -> set[str]:
    return set((dataset / "stages" / name).read_text().split())


# -- curriculum ----------------------------------------------------------------------------
CURRICULUM = Curriculum(pairs_from=2, triples_from=4, pairs_share=0.4, triples_share=0.2)


@pytest.mark.parametrize("accumulation, batch_size", list(product([1, 3], [1, 2])))
def test_each_stage_draws_from_its_stage_list_at_its_shares(dataset, accumulation, batch_size):
    images, groups = read_stencil_set(dataset, 16)
    curriculum = Curriculum(pairs_from=300, triples_from=600, pairs_share=0.4, triples_share=0.2)
    order = CurriculumOrder(images, groups, curriculum, batch_size, accumulation, seed=0)
    files = [str(i.path.relative_to(dataset)) for i in images]
    stage_lists = [listed(dataset, f"{n}.txt") for n in ("1-singles", "2-pairs", "3-triples")]
    new = [stage_lists[0], stage_lists[1] - stage_lists[0], stage_lists[2] - stage_lists[1]]
    drawn = [Counter() for _ in range(3)]
    for step in range(900):
        stage = 0 if step < 300 else 1 if step < 600 else 2
        for _ in range(accumulation):
            batch = [files[i] for i in order.next()]
            assert len({images[files.index(f)].bucket for f in batch}) == 1  # one bucket
            assert set(batch) <= stage_lists[stage], (step, batch)
            group = next(g for g in range(3) if batch[0] in new[g])
            drawn[stage][group] += 1
    for stage, expected in enumerate(([1.0], [0.6, 0.4], [0.4, 0.4, 0.2])):
        total = sum(drawn[stage].values())
        shares = [drawn[stage][g] / total for g in range(3)]
        assert shares[len(expected) :] == [0.0] * (3 - len(expected))
        # 300 steps' draws: binomial standard error <= 0.03 at one draw per step
        assert np.allclose(shares[: len(expected)], expected, atol=0.09), (stage, shares)
    # Every image of a stage's new group is drawn once the stage has run long enough.
    assert {files[i] for g in groups for i in g} == stage_lists[2]


def test_stage_boundaries_are_by_optimiser_step():
    assert [CURRICULUM.stage_at(s) for s in range(6)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"pairs_from": 4, "triples_from": 4}, "pairs_from .4. < triples_from .4."),
        ({"pairs_from": 2, "triples_from": 6}, r"< recipe.steps \(6\)"),
        ({"pairs_share": 0.7, "triples_share": 0.4}, "more than 1"),
    ],
)
def test_bad_curriculum_names_the_key(settings, match):
    run = {"dataset": "t", "recipe": {"steps": 6},
           "curriculum": {"pairs_from": 2, "triples_from": 4, **settings}}  # fmt: skip
    config = stencil_config({"datasets": {"t": {}}, "runs": {"r": run}})
    with pytest.raises(ConfigError, match=f"stencil.runs.r.curriculum: .*{match}"):
        check_stencil_runs(config["stencil"])


def test_samples_must_fit_the_transparent_vae():
    run = {"dataset": "t", "recipe": {"sample_size": [64, 68]}}
    config = stencil_config({"datasets": {"t": {}}, "runs": {"r": run}})
    check_stencil_runs(config["stencil"])  # no spec: no constraint
    with pytest.raises(ConfigError, match=r"runs.r.recipe.sample_size: \[64, 68\] .* of 8"):
        check_stencil_runs(config["stencil"], TINY_VAE_SPEC)


@pytest.mark.parametrize("emptied", ["2-pairs", "3-triples"])
def test_a_stage_that_adds_nothing_is_refused_by_name(dataset, tmp_path, emptied):
    import shutil

    copy = tmp_path / "stencil-t"
    shutil.copytree(dataset, copy)
    before = {"2-pairs": "1-singles", "3-triples": "2-pairs"}[emptied]
    shutil.copyfile(copy / "stages" / f"{before}.txt", copy / "stages" / f"{emptied}.txt")
    with pytest.raises(ConfigError, match=f"{emptied}.txt: stage .* adds no images"):
        read_stencil_set(copy, 16)


def test_run_needs_a_known_set_and_loras_resolve_by_run_name():
    config = stencil_config({"datasets": {"t": {}}, "runs": {"r": {"dataset": "x"}}})
    with pytest.raises(ConfigError, match=r"stencil.runs.r.dataset: 'x' is not a set"):
        check_stencil_runs(config["stencil"])
    assets = {"prompts": ["cube"], "max_sequence_length": 64,
              "loras": [{"file": "stencil:r"}, {"file": "mine.safetensors"}]}  # fmt: skip
    stencil = {"datasets": {"t": {}}, "assets": {"s": assets},
               "runs": {"r": {"dataset": "t", "recipe": {"max_sequence_length": 64}}}}  # fmt: skip
    config = stencil_config(stencil)
    resolved = asset_sets_with_lora_files(config["stencil"], "work/models")
    files = [lora["file"] for lora in resolved["s"]["loras"]]
    assert files == ["work/models/stencil-r.safetensors", "mine.safetensors"]
    assert config["stencil"]["assets"]["s"]["loras"][0]["file"] == "stencil:r"  # as it was
    stencil["assets"]["s"]["loras"] = [{"file": "stencil:nope"}]
    with pytest.raises(ConfigError, match=r"loras.0.file: 'nope' is not a run"):
        asset_sets_with_lora_files(stencil_config(stencil)["stencil"], "work/models")
    stencil["assets"]["s"] |= {"loras": [{"file": "stencil:r"}], "max_sequence_length": 32}
    with pytest.raises(ConfigError, match=r"assets.s.max_sequence_length: 32 differs"):
        asset_sets_with_lora_files(stencil_config(stencil)["stencil"], "work/models")


def test_polynomial_schedule_decays_with_its_power():
    for power in (1.0, 2.0):
        settings = recipe("stencil", steps=10, warmup_steps=0, lr=1e-3, lr_power=power)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
        schedule = make_schedule(optimizer, settings)
        rates = []
        for _ in range(10):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        expected = [(1e-3 - 1e-7) * (1 - s / 10) ** power + 1e-7 for s in range(10)]
        assert np.allclose(rates, expected, rtol=1e-6)


def test_stencil_recipe_defaults_are_the_papers():
    settings = recipe("stencil")
    assert (settings.optimizer, settings.lr_schedule, settings.rank) == (
        "adamw8bit",
        "polynomial",
        16,
    )
    run = stencil_config({"datasets": {"t": {}}, "runs": {"r": {"dataset": "t"}}})
    run = run["stencil"]["runs"]["r"]
    assert run["recipe"]["steps"] == 12000 and run["curriculum"]["pairs_from"] == 1500
    assert run["curriculum"]["triples_from"] == 6000


# -- training -----------------------------------------------------------------------------
def tiny_vae(seed: int) -> TransparentVAE:
    torch.manual_seed(seed)
    return TransparentVAE(TransparentVAESpec.from_yaml(TINY_VAE_SPEC)).eval()


def record(seed: int) -> dict:
    return {"spec": str(TINY_VAE_SPEC), "weights": f"seed{seed}", "sha256": f"sha-{seed}"}


# The stencil recipe's own optimiser (bitsandbytes' AdamW 8-bit steps on the CPU too).
STENCIL_SMALL = {**SMALL, "steps": 6, "save_every": 3, "warmup_steps": 1}


def stencil_trainer(dataset, run_dir, cache_dir, vae_seed=0, **overrides) -> StencilTrainer:
    settings = recipe("stencil", **{**STENCIL_SMALL, **overrides})
    return StencilTrainer(
        settings,
        load_flux(TINY_SPEC),
        dataset,
        run_dir,
        vae=tiny_vae(vae_seed),
        vae_record=record(vae_seed),
        curriculum=CURRICULUM,
        cache_dir=cache_dir,
    )


def test_rgba_latents_go_through_the_offset_encoder(dataset, tmp_path):
    cache = tmp_path / "cache"
    run = stencil_trainer(dataset, tmp_path / "a", cache)
    image = run.data.images[0]
    flux_vae, vae = run.components.vae, run.vae
    rgba = rgba_tensor(image.path)
    with torch.no_grad():
        premultiplied = (rgba[:, :3] * 2 - 1) * rgba[:, 3:]
        posterior = flux_vae.encode(premultiplied).latent_dist
        offset = vae.encoder(torch.cat([pad_rgb(rgba), rgba[:, 3:]], 1)) * vae.spec.offset_scale
    expected = posterior.mean + posterior.std * offset
    shift, scale = flux_vae.config.shift_factor, flux_vae.config.scaling_factor
    cached = run.data.latents([image])
    assert torch.allclose(cached, (expected - shift) * scale, atol=1e-5)
    assert offset.abs().mean() > 1e-3  # the offset really moved the latent off the mean
    assert run.cache_stats["latents_encoded"] == len(run.data.images)
    # Another offset encoder (other transparent VAE weights): other cached latents.
    other = stencil_trainer(dataset, tmp_path / "b", cache, vae_seed=1)
    assert other.cache_stats["latents_encoded"] == len(run.data.images)
    assert not torch.allclose(other.data.latents([image]), cached, atol=1e-3)
    assert other.digest != run.digest
    # The same weights again: every latent comes from the cache.
    again = stencil_trainer(dataset, tmp_path / "c", cache)
    assert again.cache_stats["latents_reused"] == len(run.data.images)
    assert torch.equal(again.data.latents([image]), cached)


def rows(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def bitwise_equal(a, b) -> bool:
    """Nested state (dicts, lists, tensors, numbers) equal bit for bit."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("boundary", [CURRICULUM.pairs_from, CURRICULUM.triples_from])
def test_resume_just_before_a_stage_boundary_is_bit_identical(dataset, tmp_path, boundary):
    cache = tmp_path / "cache"
    straight = stencil_trainer(dataset, tmp_path / "a", cache, save_every=1)
    straight.run()
    stopped = stencil_trainer(dataset, tmp_path / "b", cache, save_every=1)
    stopped.run(stop_after=boundary - 1)  # the last step of the stage before
    resumed = stencil_trainer(dataset, tmp_path / "b", cache, save_every=1)
    assert resumed.step == boundary - 1 and resumed.resumed_from is not None
    resumed.run()
    a, b = straight.state_dict(), resumed.state_dict()
    assert_same_adapter_and_ema(a, b)
    assert bitwise_equal(a["optimizer"], b["optimizer"])  # 8-bit states and their scales
    assert a["order"] == b["order"] and a["order"]["draws"] == 6
    assert torch.equal(a["generator"], b["generator"]) and a["schedule"] == b["schedule"]
    logged = [(r["step"], r["stage"], r["loss"]) for r in rows(straight.run_dir / "losses.csv")]
    assert logged == [
        (r["step"], r["stage"], r["loss"]) for r in rows(resumed.run_dir / "losses.csv")
    ]
    assert [r[1] for r in logged] == ["1", "1", "2", "2", "3", "3"]


def test_samples_are_rgba_over_a_checkerboard_and_the_card_has_the_stages(dataset, tmp_path):
    run = stencil_trainer(dataset, tmp_path / "run", tmp_path / "cache", steps=5, save_every=5)
    result = run.run()
    [checkpoint] = run.checkpoints()
    with Image.open(checkpoint / "samples" / "p0-seed0.png") as sample:
        assert sample.mode == "RGBA" and sample.size == (64, 64)
    with Image.open(checkpoint / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGB"
    card = run.model_card(run.export(tmp_path / "stencil.safetensors"), result)
    stages = card["curriculum"]["stages"]
    assert [s["from_step"] for s in stages] == [0, 2, 4]
    shares = [pytest.approx(s) for s in ([1.0], [0.6, 0.4], [0.4, 0.4, 0.2])]
    assert [s["shares"] for s in stages] == shares
    assert card["transparent_vae"]["sha256"] == "sha-0"
    assert sum(s["images_added"] for s in stages) == len(card["data"]["images"])


def test_layer_lora_is_fused_before_the_base_is_quantised(dataset, tmp_path):
    from blkassist.flux.generate import render
    from blkassist.probe import sha256_file
    from blkassist.stencil_model.assets import fuse_layer_lora
    from blkassist.stencil_model.curriculum import stencil_training
    from blkassist.stencil_model.vae import save_weights

    layer = random_lora_file(tmp_path, "l.st", seed=0)
    save_weights(tiny_vae(0), tmp_path / "vae.pth")
    settings = recipe("stencil", **{**STENCIL_SMALL, "quantize": True})
    job = stencil_training(str(TINY_VAE_SPEC), str(tmp_path / "vae.pth"), CURRICULUM, str(layer))
    components = job["loader"](TINY_SPEC, "cpu", settings)
    base, fused = load_flux(TINY_SPEC), load_flux(TINY_SPEC)
    fuse_layer_lora(fused.pipeline(), layer)
    assert components.quantized and components.identity["model"] != base.identity["model"]
    sample = {"seed": 3, "width": 32, "height": 32, "steps": 2, "guidance": 3.5,
              "max_sequence_length": 32, "prompt": "cube", "output_type": "latent"}  # fmt: skip
    got, want, plain = (render(c.pipeline(), **sample) for c in (components, fused, base))
    assert (got - want).abs().mean() < 0.5 * (got - plain).abs().mean()
    trainer = job["trainer_factory"](settings, components, dataset, tmp_path / "run", None)
    assert trainer.vae_record["layer_lora"]["sha256"] == sha256_file(layer)
    assert trainer.vae_record["sha256"] == sha256_file(tmp_path / "vae.pth")
