"""Starting noise of the refinement windows: one latent noise field per pass and canvas.

Two overlapping windows that draw their starting noise independently cross-fade two
unrelated textures in their overlap, which lowers texture energy along every seam (about a
quarter at the seam line). Here every window of a pass reads its noise from one field that
covers the whole canvas on its latent grid (a latent pixel is 8 image pixels; window origins
lie on the 16-pixel grid, plan.py), so two windows start from identical noise where they
overlap, and their textures agree there as far as their differing context allows.

The field is never held whole: it is made of square chunks of CHUNK latent pixels, chunk
(row, column) drawn by numpy's PCG64 from SeedSequence([field seed, row, column]), and a
window assembles the few chunks it touches (memory: a window's latents, whatever the canvas
size). Every bit of the 63-bit field seed counts. Noise is drawn on the CPU in float32, so
it is the same on every device.

A window may draw its own noise instead (OwnNoise: a window re-rolled with a new seed, for
instance); the refiner only asks a window's noise source for latents of a shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

CHUNK = 64  # latent pixels per chunk side (512 image pixels at the VAE's factor 8)
GENERATOR = "numpy PCG64(SeedSequence([seed, chunk_row, chunk_column])).standard_normal float32"


class NoiseSource(Protocol):
    def latents(self, channels: int, height: int, width: int, factor: int) -> np.ndarray:
        """(channels, height, width) float32 starting noise for a window whose latents are
        `height` x `width` at `factor` image pixels per latent pixel."""
        ...

    @property
    def key(self) -> int:
        """A deterministic identity of this draw (stand-in refiners seed from it)."""
        ...


def field_seed(seed: int, mural: str, step: int, number: int) -> int:
    """The 63-bit seed of pass `step`.`number`'s noise field."""
    text = f"{seed}:{mural}:{step}:{number}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def _draw(entropy: list[int], shape: tuple[int, ...]) -> np.ndarray:
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    return generator.standard_normal(shape, dtype=np.float32)


@dataclass(frozen=True)
class NoiseField:
    """A pass's canvas-wide latent noise, drawn chunk by chunk on demand."""

    seed: int

    def chunk(self, channels: int, row: int, column: int) -> np.ndarray:
        return _draw([self.seed, row, column], (channels, CHUNK, CHUNK))

    def region(self, channels: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Latent pixels [top, top + height) x [left, left + width) of the field."""
        if top < 0 or left < 0:
            raise ValueError(f"latent region at ({left}, {top}) starts outside the field")
        out = np.empty((channels, height, width), np.float32)
        for row in range(top // CHUNK, (top + height - 1) // CHUNK + 1):
            for column in range(left // CHUNK, (left + width - 1) // CHUNK + 1):
                y0, x0 = max(top, row * CHUNK), max(left, column * CHUNK)
                y1 = min(top + height, (row + 1) * CHUNK)
                x1 = min(left + width, (column + 1) * CHUNK)
                chunk = self.chunk(channels, row, column)
                out[:, y0 - top : y1 - top, x0 - left : x1 - left] = chunk[
                    :,
                    y0 - row * CHUNK : y1 - row * CHUNK,
                    x0 - column * CHUNK : x1 - column * CHUNK,
                ]
        return out

    def describe(self) -> dict:
        return {"field_seed": self.seed, "chunk_latents": CHUNK, "generator": GENERATOR}


@dataclass(frozen=True)
class FieldNoise:
    """A window's noise: its part of the pass's field (window origin in image pixels)."""

    field: NoiseField
    x: int
    y: int

    def latents(self, channels: int, height: int, width: int, factor: int) -> np.ndarray:
        if self.x % factor or self.y % factor:
            raise ValueError(
                f"window at ({self.x}, {self.y}) is not on the {factor}-pixel latent grid"
            )
        return self.field.region(channels, self.y // factor, self.x // factor, height, width)

    @property
    def key(self) -> int:
        text = f"{self.field.seed}:{self.x}:{self.y}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class OwnNoise:
    """A window's own noise, independent of every other window's."""

    seed: int

    def latents(self, channels: int, height: int, width: int, factor: int) -> np.ndarray:
        return _draw([self.seed], (channels, height, width))

    @property
    def key(self) -> int:
        return self.seed
