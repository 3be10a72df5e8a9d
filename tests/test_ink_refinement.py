"""Diffusion refinement on the learned ink model does what it is for.

On a Lanczos 2x enlargement of an ink artwork (the demo's `mural_flux`), the refinement
with the demo texture LoRA must put back the crisp marks the enlargement blurred (its
high-frequency statistics move toward the artist's corpus), keep the picture (low
frequencies within 2/255), leave no texture dip at its seams, do nothing at denoise 0 and
change more the more it is asked to. Each assertion fails when the effect is gone: with
the refinement switched off the mural is its base. (Orientation statistics do not move
closer at this scale: the small model redraws ruled lines with a wobble; see the README.)
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from blkassist.canvas import open_canvas
from blkassist.demo.synth import pen_and_ink
from blkassist.flux.loader import load_flux
from blkassist.refine.noise import OwnNoise
from blkassist.refine.refiner import FluxRefiner
from blkassist.texture.ink import (
    feature_distances,
    folder_crops,
    grid_crops,
    ink_stats,
    profile,
)
from tests.flux_fixtures import REPO, refiner_options

INK_MODEL = REPO / "resources" / "flux" / "ink"
CROP = 128
# The paper's pass values (A 0.25-0.37, B 0.17-0.23, C 0.13-0.17, coherence 0.12).
PASS_VALUES = (0.12, 0.13, 0.15, 0.17, 0.20, 0.23, 0.25, 0.30, 0.37)
HIGH_FREQUENCY = ("log_energy", "edge_density")


def low_pass(pixels: np.ndarray, cell: int = 64) -> np.ndarray:
    """Means of cell x cell blocks: the picture without its texture (anchoring keeps the
    base's wavelet residual below 2^5 = 32 px; 64-px blocks are wholly above it)."""
    height, width = (s // cell * cell for s in pixels.shape[:2])
    blocks = pixels[:height, :width, :3].astype(np.float64)
    return blocks.reshape(height // cell, cell, width // cell, cell, 3).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def demo_mural(demo_run: Path) -> dict:
    """The demo diffusion mural, its SR base (Lanczos 2x) and the corpus it learned from."""
    final = tifffile.imread(demo_run / "results" / "mural_flux_final.tif")
    base = np.asarray(open_canvas(demo_run / "work" / "mural_flux" / "canvas1.zarr")[:])
    corpus = folder_crops(demo_run / "work" / "demo" / "corpus", CROP)
    seams = json.loads((demo_run / "results" / "mural_flux_seams.json").read_text())
    return {"final": final, "base": base, "corpus": corpus, "seams": seams}


def test_refinement_puts_back_the_corpus_texture_and_keeps_the_picture(demo_mural):
    final, base = demo_mural["final"], demo_mural["base"]
    assert final.shape == base.shape
    corpus = profile([ink_stats(c) for c in demo_mural["corpus"]])
    before = feature_distances(profile([ink_stats(c) for c in grid_crops(base, CROP)]), corpus)
    after = feature_distances(profile([ink_stats(c) for c in grid_crops(final, CROP)]), corpus)
    figures = {"before": before, "after": after}
    for feature in HIGH_FREQUENCY:  # the demo: log energy 2.08 -> 0.95, edges 0.84 -> 0.60
        assert after[feature] < 0.8 * before[feature], figures
    # The picture is the base's: 64-px block means within 2/255 (mean over the mural).
    drift = np.abs(low_pass(final) - low_pass(base))
    assert drift.mean() <= 2.0, (drift.mean(), np.percentile(drift, 99))
    # ... while the texture really changed (the refinement was not switched off).
    assert np.abs(final[..., :3].astype(int) - base[..., :3]).mean() > 2.0


def test_refinement_leaves_no_texture_dip_at_its_seams(demo_mural):
    report = demo_mural["seams"]
    assert report["final"]["texture_ratio"] >= 0.9, report["final"]
    for refinement in report["passes"]:
        assert refinement["texture_ratio"] >= 0.9, refinement


@pytest.fixture(scope="module")
def enlarged_windows() -> np.ndarray:
    """Six 128-px windows of a held-out ink drawing enlarged 2x with Lanczos."""
    drawing = pen_and_ink(192, 128, seed=424242)
    enlarged = drawing.resize((384, 256), Image.Resampling.LANCZOS)
    return np.stack(grid_crops(np.asarray(enlarged.convert("RGB")), CROP))


def test_denoise_zero_is_the_identity_and_more_denoise_changes_more(enlarged_windows):
    options = refiner_options(steps=4, max_sequence_length=64, prompt="")
    refiner = FluxRefiner(load_flux(INK_MODEL, "cpu"), **options)
    noise = [OwnNoise(seed) for seed in range(len(enlarged_windows))]
    assert np.array_equal(refiner.refine(enlarged_windows, noise, 0.0), enlarged_windows)
    change = {
        denoise: float(np.abs(refiner.refine(enlarged_windows, noise, denoise).astype(int)
                              - enlarged_windows).mean())
        for denoise in PASS_VALUES
    }  # fmt: skip
    values = [change[d] for d in PASS_VALUES]
    assert all(a < b for a, b in itertools.pairwise(values)), change
