"""Real-ESRGAN fine-tuning on CPU: real weights, overfitting, exact resume, export, EMA
warm-up and clean pairs, and a demo-recipe fine-tune that must beat its starting weights."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from blkassist.config import definition_with_defaults, section_with_defaults
from blkassist.corpus.normalise import normalise_collection
from blkassist.demo.corpus import write_corpus
from blkassist.errors import ConfigError, ModelFileError
from blkassist.progress import ProgressSettings
from blkassist.sr import degrade
from blkassist.sr.degrade import DegradationSettings, Degrader, bicubic_reduce, sample_kernels
from blkassist.sr.models import NeuralUpscaler
from blkassist.sr.ncnn import convert
from blkassist.sr.train.patches import PatchSampler, PatchSource
from blkassist.sr.train.run import train_run, train_settings
from blkassist.sr.train.trainer import EsrganTrainer, TrainSettings, ema_decay_at
from tests.conftest import (
    REPO,
    run_snakemake,
    save_tiny_rrdbnet,
    synthetic_corpus,
    textured,
    write_config,
)
from tests.flux_fixtures import plant_code_running_checkpoint

# 64 px patches keep 16 px after the first resize (>= 0.25), wide enough for the 21-tap blur.
SMALL = {"collections": ["scans"], "gt_size": 64, "batch_size": 1, "checkpoint_every": 2,
         "validate_every": 2, "validation_crops": 2, "loss": {"perceptual": 0.0}, "seed": 4,
         "degradation": {"resize_range": (0.25, 1.5)}}  # fmt: skip
LOSS = ("l1", "perceptual", "gan")


def small(**overrides) -> TrainSettings:
    """SMALL with `overrides` (loss weights by name) as an esrgan run, schema defaults filled."""
    run = {**SMALL, **{k: v for k, v in overrides.items() if k not in LOSS}}
    run["loss"] = {**SMALL["loss"], **{k: v for k, v in overrides.items() if k in LOSS}}
    return train_settings(section_with_defaults(run, "esrgan.test"))


def degradation(**overrides) -> DegradationSettings:
    return DegradationSettings.from_config(overrides, "esrgan.test.degradation")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for i in range(3):
        Image.fromarray(textured(160, 200, seed=i)).save(folder / f"s{i}.png")
        paths.append(PatchSource(str(folder / f"s{i}.png")))
    return paths


def trainer(tmp_path, scans, weights, **overrides):
    settings = small(**overrides)
    return EsrganTrainer(settings, scans[:2], scans[2:], str(weights), tmp_path / "run")


def test_a_few_iterations_from_the_real_x4plus_weights(tmp_path, scans, caplog):
    weights = convert("realesrgan-x4plus", tmp_path / "x4plus.pth")
    run = trainer(tmp_path, scans, weights, iterations=2, validate_every=100)
    before = {k: v.clone() for k, v in run.generator.state_dict().items()}
    with caplog.at_level("INFO", logger="blkassist.progress"):
        result = run.run(progress=ProgressSettings(every_steps=100, every_seconds=1e9))
    assert result["iterations"] == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "blkassist.progress"]
    assert [line.split(",")[0] for line in lines] == [
        "Real-ESRGAN: iteration 1/2 (50.0%)",
        "Real-ESRGAN: iteration 2/2 (100.0%)",
    ]
    assert all(
        re.search(r"loss [\d.e+-]+, lr 0.0001, [\d.e+-]+ iterations/s, ETA", x) for x in lines
    )
    changed = [k for k, v in run.generator.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    rows = (run.run_dir / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,lr,l1,gan_g,gan_d") and len(rows) == 3


def test_tiny_generator_overfits_one_patch(tmp_path):
    Image.fromarray(textured(64, 64, seed=9)).save(tmp_path / "one.png")
    source = [PatchSource(str(tmp_path / "one.png"))]
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth", num_feat=16)
    quiet = {"resize_prob": (0, 0, 1), "resize_prob2": (0, 0, 1), "noise_range": (0, 0.5),
             "noise_range2": (0, 0.5), "poisson_scale_range": (0, 0.01),
             "poisson_scale_range2": (0, 0.01), "jpeg_range": (94, 95), "jpeg_range2": (94, 95),
             "blur_sigma": (0.2, 0.3), "blur_sigma2": (0.2, 0.3)}  # fmt: skip
    settings = small(gan=0.0, lr=2e-3, iterations=120, validate_every=1000,
                     checkpoint_every=1000, degradation=quiet)  # fmt: skip
    run = EsrganTrainer(settings, source, source, str(weights), tmp_path / "run")
    run.sampler.jitter = 0
    run.run()
    losses = [float(line.split(",")[2]) for line in
              (run.run_dir / "losses.csv").read_text().splitlines()[1:]]  # fmt: skip
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_killed_run_resumes_with_identical_state(tmp_path, scans):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    straight = trainer(tmp_path / "a", scans, weights, iterations=4)
    straight.run()
    interrupted = trainer(tmp_path / "b", scans, weights, iterations=4)
    interrupted.run(stop_after=2)  # the process dies after its checkpoint at 2...
    with open(interrupted.run_dir / "losses.csv", "a") as log:
        log.write("3,0.0001,9,9,9\n")  # ...having logged a step it never checkpointed
    del interrupted
    resumed = trainer(tmp_path / "b", scans, weights, iterations=4)
    assert resumed.resumed_from is not None and resumed.iteration == 2
    resumed.run()
    for part in ("generator", "ema", "discriminator"):
        got, want = getattr(resumed, part).state_dict(), getattr(straight, part).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), part
    assert resumed.sampler.state_dict() == straight.sampler.state_dict()
    assert resumed.opt_g.state_dict()["state"].keys() == straight.opt_g.state_dict()["state"].keys()
    for log_name in ("validation.csv", "losses.csv"):
        a = (tmp_path / "a" / "run" / straight.settings.digest() / log_name).read_text()
        b = (tmp_path / "b" / "run" / resumed.settings.digest() / log_name).read_text()
        assert a == b, log_name


def test_a_planted_code_running_checkpoint_is_refused_not_run(tmp_path, scans):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    first = trainer(tmp_path, scans, weights, iterations=2, validate_every=100)
    first.run()
    marker = tmp_path / "code-ran"
    plant_code_running_checkpoint(first._checkpoints()[-1], marker)
    with pytest.raises(ModelFileError, match=r"refused to resume.*delete it"):
        trainer(tmp_path, scans, weights, iterations=2, validate_every=100)
    assert not marker.exists()


def test_export_loads_strictly_into_the_tiler(tmp_path, scans):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    run = trainer(tmp_path, scans, weights, iterations=2)
    run.run()
    run.export(tmp_path / "export.pth")
    assert set(torch.load(tmp_path / "export.pth", weights_only=True)) == {"params_ema"}
    upscaler = NeuralUpscaler.from_file(tmp_path / "export.pth")
    assert upscaler(textured(20, 24)[None], 4).shape == (1, 80, 96, 3)


def test_patches_prefer_detail_and_respect_masks(tmp_path):
    canvas = np.full((256, 256, 3), 235, np.uint8)
    canvas[:, 128:] = textured(256, 128, seed=3)  # all the detail is on the right
    Image.fromarray(canvas).save(tmp_path / "half.png")
    sampler = PatchSampler([PatchSource(str(tmp_path / "half.png"))], 32, seed=0, jitter=0)
    sampler.rng = np.random.default_rng(0)
    detailed = sum(patch.std() > 10 for patch in sampler.sample(60))
    assert detailed > 50
    mask = np.zeros((256, 256), np.uint8)
    mask[:, :64] = 255  # the artist allows only the flat left quarter
    Image.fromarray(mask).save(tmp_path / "half.mask.png")
    restricted = PatchSampler(
        [PatchSource(str(tmp_path / "half.png"), str(tmp_path / "half.mask.png"))], 32,
        seed=0, mask_mode="restrict", jitter=0,
    )  # fmt: skip
    assert all(patch.std() < 10 for patch in restricted.sample(30))


def test_perceptual_loss_without_vgg19_is_a_clear_error(tmp_path, scans):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    with pytest.raises(ModelFileError, match=r"VGG19 weights not found.*loss\.perceptual"):
        EsrganTrainer(small(perceptual=0.1), scans, scans, str(weights),
                      tmp_path / "run", vgg19=str(tmp_path / "vgg19.pth"))  # fmt: skip


def test_unknown_degradation_setting_names_the_key():
    with pytest.raises(ConfigError, match=r"esrgan\.r\.degradation: unknown.*'blurr'"):
        DegradationSettings.from_config({"blurr": 1}, "esrgan.r.degradation")


def test_ema_warmup_follows_the_diffusers_convention():
    from diffusers.training_utils import EMAModel

    steps = [*range(1, 300), *np.unique(np.geomspace(300, 300_000, 200).astype(int))]
    for decay in (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999):
        ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=decay)
        for step in map(int, steps):  # through the ramp and past the cap
            assert math.isclose(ema_decay_at(step, decay, True), ema.get_decay(step)), step
            assert ema_decay_at(step, decay, False) == decay


@pytest.mark.parametrize("warmup", [True, False])
def test_the_ema_follows_a_short_run_only_with_warmup(tmp_path, scans, tiny_weights, warmup):
    run = trainer(tmp_path, scans, tiny_weights, iterations=1, ema_warmup=warmup, gan=0.0)
    start = {k: v.clone() for k, v in run.ema.state_dict().items()}
    run.run()
    live, ema = run.generator.state_dict(), run.ema.state_dict()
    for key, value in ema.items():
        expected = live[key] if warmup else start[key].lerp(live[key], 1 - 0.999)
        assert torch.allclose(value, expected, atol=1e-7), key


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_clean_fraction_reduces_that_share_of_pairs_like_validation(
    tmp_path, scans, tiny_weights, fraction
):
    run = trainer(tmp_path, scans, tiny_weights, clean_fraction=fraction, gt_size=96,
                  batch_size=16)  # fmt: skip
    lr, hr = run._batch()
    assert lr.shape == (16, 3, 24, 24)
    clean = [torch.equal(lr[i], bicubic_reduce(hr[i : i + 1], 4)[0]) for i in range(16)]
    if fraction in (0.0, 1.0):
        assert all(clean) == bool(fraction) and any(clean) == bool(fraction)
    else:
        assert 4 <= sum(clean) <= 12


def test_patches_too_small_for_the_degradation_are_refused_by_name(monkeypatch):
    shrink_most = degradation(second_blur_prob=1.0)
    degrader = Degrader(shrink_most, torch.device("cpu"))
    # Every random resize draws its smallest factor: the pipeline's narrowest case.
    monkeypatch.setattr(degrade, "_factor", lambda probs, scale_range: scale_range[0])
    for gt_size in range(64, 100, 4):  # the real pipeline fails exactly where the check refuses
        try:
            shrink_most.check_patch_size(gt_size, "esrgan.r")
            refused = None
        except ConfigError as error:
            refused = error
        try:
            degrader(torch.rand(1, 3, gt_size, gt_size), sample_kernels(shrink_most, 1))
            crashed = False
        except RuntimeError:
            crashed = True
        assert (refused is not None) == crashed, gt_size
    with pytest.raises(ConfigError, match=r"esrgan\.r\.gt_size: 64 px .* use gt_size >= 76"):
        degradation().check_patch_size(64, "esrgan.r")
    degradation(resize_range=(0.3, 1.5)).check_patch_size(64, "esrgan.r")


@pytest.fixture(scope="module")
def ink_manifest(tmp_path_factory) -> str:
    """A small pen-and-ink corpus drawn by the demo's own code, normalised as the workflow does."""
    folder = tmp_path_factory.mktemp("ink")
    write_corpus(folder / "corpus", seed=11, compositions=6, details=2, long_side=512,
                 high_resolution=0)  # fmt: skip
    normalise_collection("ink", folder / "corpus", folder / "images", folder / "manifest.tsv",
                         folder / "report.json", 10**8)  # fmt: skip
    return str(folder / "manifest.tsv")


def demo_recipe(**overrides) -> dict:
    """The demo's fine-tune (config/config.yaml esrgan.demo) with the schema's defaults."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["esrgan"]["demo"]
    schema = REPO / "config" / "schema.yaml"
    return definition_with_defaults({**demo, **overrides}, schema, "esrgan_run", "esrgan.demo")


def fine_tune(tmp_path: Path, name: str, recipe: dict, manifest: str, init: Path) -> dict:
    outputs = {k: str(tmp_path / f"{name}-{k}") for k in ("pth", "json", "csv", "png")}
    paths = [outputs[k] for k in ("pth", "json", "csv", "png")]
    train_run(name, recipe, [manifest], str(init), str(tmp_path / name), *paths,
              str(tmp_path / "locks"), 1)  # fmt: skip
    return json.loads(Path(outputs["json"]).read_text())


@pytest.fixture(scope="module")
def pretrained_tiny(tmp_path_factory, ink_manifest) -> Path:
    """A tiny stand-in for x4plus: an RRDBNet trained on Real-ESRGAN's degradation only."""
    folder = tmp_path_factory.mktemp("pretrained")
    recipe = demo_recipe(iterations=150, lr=2e-3, clean_fraction=0.0, ema_warmup=True,
                         loss={"perceptual": 0, "gan": 0}, validate_every=150,
                         checkpoint_every=150, validation_fraction=0)  # fmt: skip
    tiny = save_tiny_rrdbnet(folder / "random.pth", num_feat=16, num_block=2)
    fine_tune(folder, "pretrain", recipe, ink_manifest, tiny)
    return folder / "pretrain-pth"


def test_the_demo_recipe_fine_tune_beats_its_start_and_is_chosen(
    tmp_path, ink_manifest, pretrained_tiny, caplog
):
    with caplog.at_level(logging.INFO, logger="blkassist"):
        card = fine_tune(tmp_path, "demo", demo_recipe(), ink_manifest, pretrained_tiny)
    chosen = card["chosen"]
    assert card["data"]["held_out_images"] >= 2
    assert chosen["fine_tuned"] and chosen["iteration"] > 0, chosen["verdict"]
    assert chosen["psnr"] > chosen["starting_weights"]["psnr"] + chosen["min_delta"]
    assert "warning" not in card
    assert any(
        r.levelno == logging.INFO and "fine-tune chosen" in r.message for r in caplog.records
    )


def test_a_run_that_cannot_beat_its_start_says_so_at_warning(
    tmp_path, ink_manifest, tiny_weights, caplog
):
    recipe = demo_recipe(iterations=1, lr=1e-30)  # a step that changes nothing
    with caplog.at_level(logging.INFO, logger="blkassist"):
        card = fine_tune(tmp_path, "stuck", recipe, ink_manifest, tiny_weights)
    assert card["chosen"]["iteration"] == 0 and not card["chosen"]["fine_tuned"]
    assert (
        card["warning"].startswith("NOT fine-tuned")
        and "best trained: iteration 1" in card["warning"]
    )
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT fine-tuned" in message for message in warned), warned
    exported = torch.load(tmp_path / "stuck-pth", weights_only=True)["params_ema"]
    start = torch.load(tiny_weights, weights_only=True)
    start = start.get("params_ema", start.get("params", start))
    assert all(torch.equal(exported[k], start[k]) for k in start)


@pytest.mark.slow
def test_workflow_trains_then_a_mural_uses_the_run(tmp_path):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    Image.fromarray(textured(48, 64, seed=1)).save(tmp_path / "art.png")
    config = {
        "corpus": synthetic_corpus(3, 1, 256),
        "esrgan": {"r": {"collections": ["ink"], "init": str(weights), "gt_size": 80,
                         "batch_size": 1, "iterations": 4, "checkpoint_every": 2,
                         "validate_every": 2, "validation_crops": 2,
                         "loss": {"perceptual": 0}}},
        "murals": {"m": {"source": "art.png", "model": "esrgan:r", "tile": 32, "pad": 16}},
        "licences": {"files": {str(weights): "BSD-3-Clause (test weights)"}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    run_snakemake(tmp_path, [path], "results/m_final.tif", "results/esrgan/r/model_card.json")
    card = json.loads((tmp_path / "results/esrgan/r/model_card.json").read_text())
    assert card["run"]["iterations"] == 4 and len(card["data"]["scans"]) == 4
    (terms,) = card["licences"]  # a derivative of the init weights and the artist's scans
    assert terms["derived_from"][0]["licence"] == "BSD-3-Clause (test weights)"
    assert terms["training_data"][0]["collection"] == "ink"
    provenance = json.loads((tmp_path / "results/m_final.provenance.json").read_text())
    assert provenance["licences"] == [terms]
    level = "INFO" if card["chosen"]["fine_tuned"] else "WARNING"  # the log says the verdict
    assert (
        f"{level} blkassist.sr.train.run: r: {card['chosen']['verdict']}"
        in (tmp_path / "logs/esrgan/r.log").read_text()
    )
    assert (tmp_path / "results/esrgan/r/validation.png").stat().st_size > 1000
    assert (tmp_path / "results/m_final.tif").exists()
    again = run_snakemake(tmp_path, [path], "results/m_final.tif")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "licences: SR model esrgan-r.pth: trained here: derivative of " in again.stdout
