"""Alpha-safe augmentation of transparent assets.

Geometry (flip, rotation, scale) resamples premultiplied float colour bilinearly (libvips'
affine) and divides back:
every output pixel's colour is then an alpha-weighted average of the object's own colours,
so the half-transparent edge keeps the object's colour (no dark or light fringe from the
colour stored under transparent pixels). Bilinear weights are never negative, so no ringing
either. Brightness/contrast act on the colour alone; grain is added only where there is
coverage and is bounded. Nothing blurs alpha.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyvips

from blkassist.stencil.composite import premultiply, unpremultiply

GRAIN_CLIP = 3.0  # grain is a normal draw clipped at this many sigmas: no specks


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise on screen
    scale: float = 1.0
    brightness: float = 0.0  # added to colour in [0, 1]
    contrast: float = 1.0  # colour stretched around mid grey
    grain: float = 0.0  # standard deviation of the grain, colour in [0, 1]
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def draw_augmentation(rng: np.random.Generator, settings: dict) -> Augmentation:
    """A random augmentation within `settings` (rotation in degrees, scale, brightness,
    contrast and grain as maximum deviations; flip as a probability)."""
    return Augmentation(
        flip=bool(rng.random() < settings["flip_probability"]),
        angle=float(rng.uniform(-1, 1) * settings["rotation"]),
        scale=float(1 + rng.uniform(-1, 1) * settings["scale"]),
        brightness=float(rng.uniform(-1, 1) * settings["brightness"]),
        contrast=float(1 + rng.uniform(-1, 1) * settings["contrast"]),
        grain=float(rng.uniform(0, 1) * settings["grain"]),
        seed=int(rng.integers(2**31)),
    )


def _matrix(augmentation: Augmentation, width: int, height: int) -> np.ndarray:
    """Output <- input pixel map: rotate and scale about the image centre."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a = math.radians(augmentation.angle)
    s = augmentation.scale
    # Image y points down: a counter-clockwise turn on screen is -a in these coordinates.
    rotate = np.array(
        [[s * math.cos(a), s * math.sin(a), 0], [-s * math.sin(a), s * math.cos(a), 0], [0, 0, 1]]
    )
    shift = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    return back @ rotate @ shift


def fit_scale(augmentation: Augmentation, rgba: np.ndarray, border: int = 1) -> Augmentation:
    """The same augmentation with its scale reduced, if needed, so that the turned and scaled
    object stays `border` pixels inside the canvas (no coverage is cut off)."""
    rows, cols = np.nonzero(rgba[..., 3])
    if len(rows) == 0:
        return augmentation
    height, width = rgba.shape[:2]
    corners = np.array(
        [
            [cols.min(), rows.min()],
            [cols.max(), rows.min()],
            [cols.min(), rows.max()],
            [cols.max(), rows.max()],
        ],
        float,
    )
    unit = _matrix(Augmentation(angle=augmentation.angle), width, height)
    moved = corners @ unit[:2, :2].T + unit[:2, 2] - ((width - 1) / 2, (height - 1) / 2)
    room = np.array([(width - 1) / 2 - border - 1, (height - 1) / 2 - border - 1])
    largest = float(np.min(room / np.maximum(np.abs(moved).max(axis=0), 1e-9)))
    if augmentation.scale <= largest:
        return augmentation
    return Augmentation(**{**augmentation.to_dict(), "scale": largest})


def augment(rgba: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """Straight uint8 RGBA in, straight uint8 RGBA out (same size)."""
    image = premultiply(rgba)
    if augmentation.flip:
        image = image[:, ::-1]
    if augmentation.angle or augmentation.scale != 1:
        height, width = image.shape[:2]
        m = _matrix(augmentation, width, height)
        turned = pyvips.Image.new_from_array(np.ascontiguousarray(image)).affine(
            [m[0, 0], m[0, 1], m[1, 0], m[1, 1]],
            interpolate=pyvips.Interpolate.new("bilinear"),
            oarea=[0, 0, width, height],
            odx=m[0, 2],
            ody=m[1, 2],
            background=[0, 0, 0, 0],
            extend="background",
        )
        image = np.asarray(turned.numpy(), dtype=np.float32)
    alpha = np.clip(image[..., 3:4], 0.0, 1.0)
    colour = np.clip(image[..., :3], 0.0, alpha)
    # Colour changes in premultiplied form: alpha * f(straight colour), f affine.
    colour = (colour - 0.5 * alpha) * augmentation.contrast + (
        0.5 + augmentation.brightness
    ) * alpha
    if augmentation.grain > 0:
        rng = np.random.default_rng(augmentation.seed)
        noise = rng.standard_normal(alpha.shape, dtype=np.float32)
        noise = np.clip(noise, -GRAIN_CLIP, GRAIN_CLIP) * augmentation.grain
        colour = colour + noise * alpha  # only where there is coverage, in proportion
    colour = np.clip(colour, 0.0, alpha)
    return unpremultiply(np.concatenate([colour, alpha], axis=-1))


def colour_map(augmentation: Augmentation, colour) -> np.ndarray:
    """Where an opaque colour (0-255) goes under the augmentation's jitter (without grain)."""
    c = np.asarray(colour, np.float64) / 255
    return np.clip((c - 0.5) * augmentation.contrast + 0.5 + augmentation.brightness, 0, 1) * 255
