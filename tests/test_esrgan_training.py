"""Real-ESRGAN fine-tuning on CPU: real weights, overfitting, exact resume, export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from blkassist.errors import ConfigError, ModelFileError
from blkassist.progress import ProgressSettings
from blkassist.sr.degrade import DegradationSettings
from blkassist.sr.models import NeuralUpscaler
from blkassist.sr.ncnn import convert
from blkassist.sr.train.patches import PatchSampler, PatchSource
from blkassist.sr.train.trainer import EsrganTrainer, TrainSettings
from tests.conftest import (
    run_snakemake,
    save_tiny_rrdbnet,
    synthetic_corpus,
    textured,
    write_config,
)
from tests.flux_fixtures import plant_code_running_checkpoint

SMALL = {"gt_size": 64, "batch_size": 1, "checkpoint_every": 2, "validate_every": 2,
         "validation_crops": 2, "perceptual": 0.0, "seed": 4}  # fmt: skip


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for i in range(3):
        Image.fromarray(textured(160, 200, seed=i)).save(folder / f"s{i}.png")
        paths.append(PatchSource(str(folder / f"s{i}.png")))
    return paths


def trainer(tmp_path, scans, weights, **overrides):
    settings = TrainSettings(**{**SMALL, **overrides})
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
    settings = TrainSettings(**{**SMALL, "gan": 0.0, "lr": 2e-3, "iterations": 120,
                                "validate_every": 1000, "checkpoint_every": 1000,
                                "degradation": quiet})  # fmt: skip
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
        EsrganTrainer(TrainSettings(**{**SMALL, "perceptual": 0.1}), scans, scans, str(weights),
                      tmp_path / "run", vgg19=str(tmp_path / "vgg19.pth"))  # fmt: skip


def test_unknown_degradation_setting_names_the_key():
    with pytest.raises(ConfigError, match=r"esrgan\.r\.degradation: unknown.*'blurr'"):
        DegradationSettings.from_config({"blurr": 1}, "esrgan.r.degradation")


@pytest.mark.slow
def test_workflow_trains_then_a_mural_uses_the_run(tmp_path):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    Image.fromarray(textured(48, 64, seed=1)).save(tmp_path / "art.png")
    config = {
        "corpus": synthetic_corpus(3, 1, 256),
        "esrgan": {"r": {"collections": ["ink"], "init": str(weights), "gt_size": 64,
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
    assert (tmp_path / "results/esrgan/r/validation.png").stat().st_size > 1000
    assert (tmp_path / "results/m_final.tif").exists()
    again = run_snakemake(tmp_path, [path], "results/m_final.tif")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "licences: SR model esrgan-r.pth: trained here: derivative of " in again.stdout
