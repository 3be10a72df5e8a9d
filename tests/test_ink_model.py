"""The shipped ink model has learnt ink, and the features built on it do what they are for.

These tests use the learned model in resources/flux/ink (rebuilt by `make ink-model`), not
the random tiny one: its samples are ink, so a LoRA's pull or a refinement's texture is
measurable, and each test fails when the effect is gone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from blkassist.demo import INK_MODEL_FORMAT, declares_demo
from blkassist.demo.ink_data import DataSettings, draw_images, samples
from blkassist.demo.synth import INK, PAPER
from blkassist.flux.folder import check_flux_folder
from blkassist.flux.generate import load_adapter, render
from blkassist.flux.loader import load_flux
from blkassist.flux.trainer import FluxLoraTrainer
from blkassist.texture.ink import distance, ink_stats, profile
from tests.flux_fixtures import REPO, TINY_SPEC, recipe

INK_MODEL = REPO / "resources" / "flux" / "ink"
TRAINING = REPO / "resources" / "flux" / "ink-training.yaml"


@pytest.fixture(scope="module")
def ink():
    return load_flux(INK_MODEL, "cpu")


@pytest.fixture(scope="module")
def held_out() -> dict:
    """Held-out samples drawn as the build draws them (never trained on), by side."""
    settings = yaml.safe_load(TRAINING.read_text())["data"]
    data = DataSettings.from_mapping({**settings, "held_out": 4})
    return samples(data, draw_images(data, held_out=True))


def sample(components, prompts, seeds, size, steps=20, **options) -> list[np.ndarray]:
    pipe = components.pipeline()
    out = []
    for prompt in prompts:
        for seed in seeds:
            image = render(pipe, seed=seed, width=size, height=size, steps=steps, guidance=3.5,
                           prompt=prompt, max_sequence_length=64, **options)  # fmt: skip
            out.append(np.asarray(image.convert("RGB")))
    return out


def demo_prompts() -> list[str]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    prompts = config["conceptor"]["concepts"]["sketches"]["prompts"]
    return [p if isinstance(p, str) else p["prompt"] for p in prompts]


def test_the_shipped_folder_is_a_complete_small_flux_with_its_card():
    check_flux_folder(INK_MODEL)  # the production loader's own completeness check
    card = json.loads((INK_MODEL / "model_card.json").read_text())
    assert card["format"] == INK_MODEL_FORMAT and declares_demo(INK_MODEL)
    size = sum(p.stat().st_size for p in INK_MODEL.rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"{size / 2**20:.1f} MiB"
    # Stipple and hairlines cost PSNR (one dot a pixel off is a large error): the shipped
    # VAE's 17.9 dB / SSIM 0.70 on held-out crops is a clear picture (vae_reconstruction.png).
    assert card["vae"]["held_out"]["psnr_db"] > 16 and card["vae"]["held_out"]["ssim"] > 0.6
    for picture in ("samples.png", "vae_reconstruction.png", "losses.png"):
        assert (INK_MODEL / picture).stat().st_size > 1000


@pytest.mark.parametrize("size", [128, 256])
def test_base_samples_are_at_least_twice_as_close_to_the_corpus_as_the_random_models(
    ink, held_out, size
):
    """At the demo's prompts and fixed seeds, at both trained sides."""
    corpus = profile([ink_stats(s.pixels) for s in held_out[size]])
    learned = sample(ink, demo_prompts(), [0, 1, 2], size)
    random_model = sample(load_flux(TINY_SPEC, "cpu"), demo_prompts(), [0, 1, 2], size, steps=4)
    near = distance(profile([ink_stats(i) for i in learned]), corpus)
    far = distance(profile([ink_stats(i) for i in random_model]), corpus)
    assert 2 * near < far, (near, far)


def one_direction_study(size: int, seed: int) -> Image.Image:
    """Ink on paper with every stroke horizontal: wobbly parallel lines of varying weight
    and spacing, in patches (a sub-collection with one distinct property)."""
    rng = np.random.default_rng(seed)
    scale = 2
    image = Image.new("RGB", (size * scale, size * scale), PAPER)
    draw = ImageDraw.Draw(image)
    y = rng.uniform(0, 6) * scale
    while y < size * scale:
        x0, x1 = rng.uniform(-20, size * 0.4) * scale, rng.uniform(size * 0.6, size + 20) * scale
        points = [
            (x, y + 1.5 * scale * math.sin(x / (17 * scale) + seed))
            for x in np.linspace(x0, x1, 24)
        ]
        draw.line(points, fill=INK, width=int(rng.integers(2, 5)))
        y += rng.uniform(5, 11) * scale
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_split(folder, images: list[Image.Image], caption: str) -> None:
    rows = []
    for index, image in enumerate(images):
        name = f"{image.width}/{image.width}x{image.height}/study{index}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
        rows.append({"file_name": name, "text": caption, "bucket": list(image.size)})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_conceptor_lora_pulls_samples_toward_its_collections_one_direction(tmp_path):
    """A LoRA trained (Conceptor recipe, Prodigy) on horizontal-only hatching makes the same
    prompt and seeds draw more horizontal strokes than the base model does."""
    caption = "a detail close-up in pen and ink, hatching"
    write_split(tmp_path / "train", [one_direction_study(128, s) for s in range(8)], caption)
    settings = recipe(
        "conceptor", steps=60, save_every=60, batch_size=2, rank=8, alpha=8,
        sample_seeds=[], validation_images=1, max_sequence_length=64, caption_dropout=0.0,
    )  # fmt: skip
    trainer = FluxLoraTrainer(
        settings, load_flux(INK_MODEL, "cpu"), tmp_path / "train", tmp_path / "run"
    )
    trainer.run()
    export = tmp_path / "lora" / "study.safetensors"
    trainer.export(export)
    target = profile([ink_stats(np.asarray(one_direction_study(128, s))) for s in (50, 51)])
    base = load_flux(INK_MODEL, "cpu")
    before = sample(base, [caption], range(6), 128)
    load_adapter(base.pipeline(), export, 1.0)
    after = sample(base, [caption], range(6), 128)
    share_before = np.mean([ink_stats(i).horizontal_share() for i in before])
    share_after = np.mean([ink_stats(i).horizontal_share() for i in after])
    wanted = float(np.mean([ink_stats(np.asarray(one_direction_study(128, s))).horizontal_share()
                            for s in (50, 51)]))  # fmt: skip
    assert share_after > share_before + 0.15, (share_before, share_after, wanted)
    closer = distance(profile([ink_stats(i) for i in after]), target)
    assert closer < distance(profile([ink_stats(i) for i in before]), target)


def test_untrained_weights_would_fail_the_sample_test(held_out):
    """The comparison above can fail: the same architecture untrained is far from ink."""
    untrained = load_flux(REPO / "resources" / "flux" / "ink.yaml", "cpu", torch.float32)
    card = json.loads((INK_MODEL / "model_card.json").read_text())
    untrained.vae.register_to_config(
        shift_factor=card["vae"]["shift_factor"], scaling_factor=card["vae"]["scaling_factor"]
    )
    corpus = profile([ink_stats(s.pixels) for s in held_out[128]])
    images = sample(untrained, demo_prompts(), [0, 1], 128, steps=8)
    learned = card["ink_statistics"]["by_side"]["128"]["distance"]["samples"]
    assert distance(profile([ink_stats(i) for i in images]), corpus) > 2 * learned


def test_the_learned_vae_reconstructs_held_out_ink_far_better_than_untrained(ink, held_out):
    """Measured again here, not read from the card: held-out 128-px crops through the
    shipped VAE against the same architecture untrained."""
    from blkassist.demo.ink_model import reconstruct, reconstruction_quality

    crops = np.stack([s.pixels for s in held_out[128][:16]])
    untrained = load_flux(REPO / "resources" / "flux" / "ink.yaml", "cpu", torch.float32).vae
    learned = reconstruction_quality(crops, reconstruct(ink.vae.float(), crops))
    baseline = reconstruction_quality(crops, reconstruct(untrained, crops))
    assert learned["psnr_db"] > baseline["psnr_db"] + 6, (learned, baseline)
    assert learned["ssim"] > baseline["ssim"] + 0.3, (learned, baseline)
