"""The ink model's training data: the demo's own pen-and-ink generator, drawn here.

Images are drawn with `blkassist.demo.synth.pen_and_ink` at the sizes and zooms of the demo
corpus (compositions and detail close-ups) from seeds of their own, so the demo corpus the
workflow draws (other seeds) stays unseen. From each image come square crops at native
scale (what a refinement window or a texture crop sees) and the whole image reduced to a
square (what a concept sheet shows), each captioned by the built-in captioner from its own
pixels. A few images are held out for the card's figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from blkassist.captions.embedded import ANALYSIS_SIDE, analyse_pixels, caption_from_facts
from blkassist.demo.synth import pen_and_ink

ASPECTS = ((4, 3), (3, 4), (1, 1), (16, 9), (2, 3))


@dataclass(frozen=True)
class DataSettings:
    seed: int
    images: int  # drawn for training
    held_out: int  # drawn for the card's held-out figures only
    long_sides: tuple[int, ...]  # cycled over the images
    zooms: tuple[float, ...]  # cycled (zoom > 1: a detail close-up, thicker marks)
    crop_sizes: tuple[int, ...]  # native-scale square crops
    crops_per_image: int  # per crop size
    overview_sizes: tuple[int, ...]  # the whole image reduced to a square of this side

    @classmethod
    def from_mapping(cls, values: dict) -> DataSettings:
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items()
            }
        )


@dataclass(frozen=True)
class Sample:
    pixels: np.ndarray  # (size, size, 3) uint8
    caption: str
    kind: str  # "crop" or "overview"
    image: int  # index of the drawn image


@dataclass(frozen=True)
class DrawnImage:
    index: int
    seed: int
    width: int
    height: int
    zoom: float
    pixels: np.ndarray

    @property
    def taxonomy(self) -> str:
        return "details" if self.zoom > 1 else "compositions"


def _size(long_side: int, aspect: tuple[int, int]) -> tuple[int, int]:
    w, h = aspect
    scale = long_side / max(w, h)
    return round(w * scale), round(h * scale)


def draw_images(settings: DataSettings, held_out: bool = False) -> list[DrawnImage]:
    """The training (or held-out) images; seeds are disjoint from the demo corpus's
    (`seed * 1000 + number` there, with small seeds) and between the two sets."""
    count = settings.held_out if held_out else settings.images
    first = settings.seed * 100_000 + (50_000 if held_out else 0)
    images = []
    for index in range(count):
        aspect = ASPECTS[index % len(ASPECTS)]
        long_side = settings.long_sides[index % len(settings.long_sides)]
        zoom = settings.zooms[(index // len(settings.long_sides)) % len(settings.zooms)]
        width, height = _size(long_side, aspect)
        seed = first + index
        pixels = np.asarray(pen_and_ink(width, height, seed=seed, zoom=zoom))
        images.append(DrawnImage(index, seed, width, height, zoom, pixels))
    return images


def caption_pixels(pixels: np.ndarray, taxonomy: str) -> str:
    """The built-in captioner's caption of an image given as pixels."""
    image = Image.fromarray(pixels)
    if max(image.size) > ANALYSIS_SIDE:
        image.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.LANCZOS)
    return caption_from_facts(analyse_pixels(np.asarray(image)), taxonomy)


def overview(pixels: np.ndarray, size: int) -> np.ndarray:
    """The whole image reduced so its short side is `size`, centre-cropped to a square."""
    image = Image.fromarray(pixels)
    scale = size / min(image.size)
    reduced = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (reduced.width - size) // 2, (reduced.height - size) // 2
    return np.asarray(reduced.crop((left, top, left + size, top + size)))


def samples(settings: DataSettings, images: list[DrawnImage]) -> dict[int, list[Sample]]:
    """Training samples by side: native-scale crops and overviews, each captioned."""
    rng = np.random.default_rng(settings.seed)
    by_size: dict[int, list[Sample]] = {}
    for image in images:
        for size in settings.crop_sizes:
            if size > min(image.width, image.height):
                continue
            for _ in range(settings.crops_per_image):
                y = int(rng.integers(0, image.height - size + 1))
                x = int(rng.integers(0, image.width - size + 1))
                crop = np.ascontiguousarray(image.pixels[y : y + size, x : x + size])
                caption = caption_pixels(crop, image.taxonomy)
                by_size.setdefault(size, []).append(Sample(crop, caption, "crop", image.index))
        whole = caption_pixels(image.pixels, image.taxonomy)
        for size in settings.overview_sizes:
            view = overview(image.pixels, size)
            by_size.setdefault(size, []).append(Sample(view, whole, "overview", image.index))
    return by_size


def stack(items: list[Sample]) -> np.ndarray:
    return np.stack([item.pixels for item in items])
