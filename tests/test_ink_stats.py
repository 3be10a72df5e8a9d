"""Ink statistics measure what they say: direction, coverage, energy, coherence, distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from blkassist.demo.synth import INK, PAPER, pen_and_ink
from blkassist.texture.ink import (
    distance,
    feature_distances,
    ink_stats,
    luma_of,
    profile,
)


def hatching(angle_degrees: float, spacing: int = 8, width: int = 2, size: int = 192) -> np.ndarray:
    """Parallel ink lines at `angle_degrees` in image coordinates (0 = horizontal, growing
    clockwise on screen, since image rows grow downwards)."""
    image = Image.new("RGB", (size, size), PAPER)
    draw = ImageDraw.Draw(image)
    theta = math.radians(angle_degrees)
    dx, dy = math.cos(theta), math.sin(theta)
    centre, reach = size / 2, size
    for offset in range(-size, size, spacing):
        px, py = centre - dy * offset, centre + dx * offset
        draw.line(
            [(px - dx * reach, py - dy * reach), (px + dx * reach, py + dy * reach)],
            fill=INK,
            width=width,
        )
    return np.asarray(image)


@pytest.mark.parametrize("angle", range(0, 180, 15))
def test_direction_share_peaks_at_the_drawn_direction(angle):
    stats = ink_stats(hatching(angle))
    shares = {a: stats.direction_share(a) for a in range(0, 180, 15)}
    assert max(shares, key=shares.get) == angle
    assert shares[angle] > 0.6
    across = (angle + 90) % 180
    assert shares[across] < 0.05
    assert stats.coherence > 0.8  # one direction everywhere


def test_horizontal_share_is_the_direction_share_at_zero():
    stats = ink_stats(hatching(0))
    assert stats.horizontal_share() == stats.direction_share(0)
    assert ink_stats(hatching(90)).horizontal_share() < 0.05


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_coverage_grows_with_line_weight(width):
    lighter = ink_stats(hatching(30, spacing=10, width=width)).coverage
    heavier = ink_stats(hatching(30, spacing=10, width=width + 2)).coverage
    assert 0 < lighter < heavier < 1


def test_blank_paper_noise_and_crossing_lines_are_told_apart():
    rng = np.random.default_rng(0)
    paper = np.full((128, 128, 3), PAPER, np.uint8)
    noise = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    crossed = np.minimum(hatching(30, size=128), hatching(120, size=128))
    blank, loud, cross = ink_stats(paper), ink_stats(noise), ink_stats(crossed)
    assert blank.energy < 1e-6 and blank.coverage == 0 and blank.edge_density == 0
    assert loud.energy > 1000 * blank.energy + 1e-3
    assert loud.coherence < 0.3 and loud.anisotropy < 0.2
    assert cross.coherence < ink_stats(hatching(30, size=128)).coherence
    assert cross.direction_share(30) > 0.25 and cross.direction_share(120) > 0.25
    assert cross.direction_share(75) < 0.1 and cross.direction_share(165) < 0.1


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_luma_of_every_pixel_format(bands):
    rgb = hatching(45, size=64)
    if bands == 1:
        image = luma_of(rgb)
    elif bands == 3:
        image = rgb
    else:  # fully opaque RGBA measures like RGB; clear RGBA is white paper
        image = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    assert luma_of(image).shape == (64, 64)
    np.testing.assert_allclose(luma_of(image), luma_of(rgb), atol=1)
    clear = np.concatenate([rgb, np.zeros((64, 64, 1), np.uint8)], axis=2)
    assert (luma_of(clear) == 255).all()


def test_too_small_an_image_is_refused():
    with pytest.raises(ValueError, match="smaller than"):
        ink_stats(np.zeros((8, 64, 3), np.uint8))


def test_distance_is_small_within_the_corpus_and_large_for_noise_and_blank():
    corpus = profile([ink_stats(np.asarray(pen_and_ink(192, 192, seed=s))) for s in range(8)])
    more = profile([ink_stats(np.asarray(pen_and_ink(192, 192, seed=s))) for s in (50, 51, 52)])
    rng = np.random.default_rng(1)
    noise = profile([ink_stats(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8))])
    blank = profile([ink_stats(np.full((192, 192, 3), PAPER, np.uint8))])
    assert distance(corpus, corpus) == 0
    assert distance(more, corpus) < 1.5
    assert distance(noise, corpus) > 5 * distance(more, corpus)
    assert distance(blank, corpus) > 5 * distance(more, corpus)
    per_feature = feature_distances(noise, corpus)
    assert set(per_feature) == {
        "coverage", "edge_density", "log_energy", "coherence", "anisotropy", "orientation"
    }  # fmt: skip
    with pytest.raises(ValueError):
        profile([])
