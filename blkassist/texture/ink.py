"""Ink statistics: what makes an image read as pen and ink, in a few numbers.

The same measures the texture classifier uses (blkassist.texture.measure: the gradient
structure tensor and a magnitude-weighted orientation histogram at a 1 px Gaussian
derivative), summed over the whole image, plus two pixel counts the captioner also reads:

- coverage: share of pixels clearly darker than the paper (luma 0.25 below its 90th
  percentile);
- edge_density: share of pixels whose gradient magnitude is above paper grain;
- energy: mean squared luma gradient (the high-frequency energy; clean paper ~1e-4,
  hatching ~1e-2);
- coherence: energy-weighted mean structure-tensor coherence of 16 px cells (one stroke
  direction per neighbourhood: 1; crossing strokes or dots: low);
- anisotropy: share of the orientation histogram above its isotropic floor;
- orientation: the orientation histogram itself (BINS bins over 180 degrees of gradient
  direction, summing to one).

`distance` compares sets of images (samples against a corpus) in units of the corpus's own
spread, so "twice as close" means the same thing for every feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from blkassist.texture.measure import BINS, _coherence, cell_grid, orientation_peaks

CELL = 16  # structure-tensor neighbourhood for coherence
INK_BELOW_PAPER = 0.25  # luma below paper by this much is ink
EDGE_GRADIENT = 0.12  # gradient magnitude (luma per pixel) above paper grain
SCALARS = ("coverage", "edge_density", "log_energy", "coherence", "anisotropy")


@dataclass(frozen=True)
class InkStats:
    coverage: float
    edge_density: float
    energy: float
    coherence: float
    anisotropy: float
    orientation: tuple[float, ...]  # BINS shares of gradient direction, summing to one

    @property
    def log_energy(self) -> float:
        return math.log10(max(self.energy, 1e-8))

    def horizontal_share(self, half_width_degrees: float = 15.0) -> float:
        """Share of the oriented energy in strokes within +-half_width of horizontal
        (gradients near vertical)."""
        return _direction_share(np.asarray(self.orientation), 0.0, half_width_degrees)

    def direction_share(self, stroke_degrees: float, half_width_degrees: float = 15.0) -> float:
        """Share of the oriented energy in strokes within +-half_width of `stroke_degrees`
        (image coordinates as in blkassist.texture.measure: 0 = horizontal, growing
        clockwise on screen, since rows grow downwards)."""
        return _direction_share(np.asarray(self.orientation), stroke_degrees, half_width_degrees)

    def as_dict(self) -> dict:
        values = asdict(self)
        values["orientation"] = [round(v, 5) for v in self.orientation]
        values["log_energy"] = self.log_energy
        return values


def _direction_share(histogram: np.ndarray, stroke_degrees: float, half_width: float) -> float:
    """Oriented share (above the isotropic floor) of strokes near `stroke_degrees`."""
    centres = (np.arange(BINS) + 0.5) * (180 / BINS)
    stroke = (centres + 90) % 180  # strokes run across the gradient
    distance = np.abs(stroke - stroke_degrees % 180)
    distance = np.minimum(distance, 180 - distance)
    floor = np.percentile(histogram, 20)
    oriented = np.maximum(histogram - floor, 0)
    total = oriented.sum()
    return float(oriented[distance <= half_width].sum() / total) if total > 0 else 0.0


def luma_of(image: np.ndarray) -> np.ndarray:
    """uint8 luma (Rec. 709) of an (H, W), (H, W, 3) or (H, W, 4) uint8 image; alpha is
    flattened onto white paper."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    rgb = image[..., :3].astype(np.float32)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255
        rgb = rgb * alpha + 255 * (1 - alpha)
    luma = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    return np.clip(luma.round(), 0, 255).astype(np.uint8)


def ink_stats(image: np.ndarray) -> InkStats:
    """Statistics of one image (uint8, grey, RGB or RGBA), at its own resolution."""
    from scipy import ndimage  # not at workflow parse time

    luma = luma_of(image)
    if min(luma.shape) < CELL:
        raise ValueError(f"image {luma.shape[1]}x{luma.shape[0]} is smaller than {CELL} px")
    values = luma.astype(np.float32) / 255
    paper = float(np.percentile(values, 90))
    gy = ndimage.gaussian_filter(values, 1.0, order=(1, 0), mode="nearest")
    gx = ndimage.gaussian_filter(values, 1.0, order=(0, 1), mode="nearest")
    grid = cell_grid(luma, CELL)
    trace = grid.tensor[..., 0] + grid.tensor[..., 1]
    histogram = grid.histogram.sum(axis=(0, 1))
    total = histogram.sum()
    shares = histogram / total if total > 0 else np.full(BINS, 1 / BINS)
    pixels = grid.tensor.shape[0] * grid.tensor.shape[1] * CELL * CELL
    weight = trace.sum()
    return InkStats(
        coverage=float((values < paper - INK_BELOW_PAPER).mean()),
        edge_density=float((np.hypot(gx, gy) > EDGE_GRADIENT).mean()),
        energy=float(weight / pixels),
        coherence=float((trace * _coherence(grid.tensor)).sum() / max(weight, 1e-12)),
        anisotropy=float(orientation_peaks(shares)["anisotropy"]),
        orientation=tuple(float(v) for v in shares),
    )


@dataclass(frozen=True)
class Profile:
    """Mean and spread of a set of images' statistics."""

    mean: dict[str, float]
    spread: dict[str, float]
    orientation: np.ndarray  # mean histogram
    orientation_spread: float  # mean L1 distance of a member's histogram from the mean
    count: int

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": self.mean,
            "spread": self.spread,
            "orientation": [round(float(v), 5) for v in self.orientation],
            "orientation_spread": self.orientation_spread,
        }


def profile(stats: Sequence[InkStats]) -> Profile:
    if not stats:
        raise ValueError("a profile needs at least one image")
    table = {name: np.array([getattr(s, name) for s in stats]) for name in SCALARS}
    histograms = np.array([s.orientation for s in stats])
    mean_histogram = histograms.mean(axis=0)
    return Profile(
        mean={name: float(v.mean()) for name, v in table.items()},
        spread={name: float(v.std()) for name, v in table.items()},
        orientation=mean_histogram,
        orientation_spread=float(np.abs(histograms - mean_histogram).sum(axis=1).mean()),
        count=len(stats),
    )


# A feature whose corpus spread is tiny (e.g. 30 identical images) would make any sample
# infinitely far: spreads are floored at these values.
SPREAD_FLOOR = {
    "coverage": 0.01,
    "edge_density": 0.01,
    "log_energy": 0.05,
    "coherence": 0.02,
    "anisotropy": 0.02,
    "orientation": 0.05,
}


def feature_distances(samples: Profile, reference: Profile) -> dict[str, float]:
    """Per feature: |sample mean - reference mean| in units of the reference's spread
    (orientation: L1 between mean histograms over the reference's mean L1 spread)."""
    distances = {}
    for name in SCALARS:
        spread = max(reference.spread[name], SPREAD_FLOOR[name])
        distances[name] = abs(samples.mean[name] - reference.mean[name]) / spread
    spread = max(reference.orientation_spread, SPREAD_FLOOR["orientation"])
    l1 = float(np.abs(samples.orientation - reference.orientation).sum())
    distances["orientation"] = l1 / spread
    return distances


def distance(samples: Profile, reference: Profile) -> float:
    """Root mean square of the feature distances: 0 = indistinguishable on average, 1 = one
    reference spread away on every feature."""
    values = list(feature_distances(samples, reference).values())
    return float(math.sqrt(sum(v * v for v in values) / len(values)))


def grid_crops(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping size x size RGB crops on a grid from the top left (the same places
    for two images of one size, so a refined image compares crop by crop with its base)."""
    height, width = pixels.shape[:2]
    return [pixels[y : y + size, x : x + size, :3]
            for y in range(0, height - size + 1, size)
            for x in range(0, width - size + 1, size)]  # fmt: skip


def folder_crops(folder, size: int) -> list[np.ndarray]:
    """grid_crops of every PNG under `folder` (sorted): a corpus's crops at native scale."""
    from pathlib import Path

    from PIL import Image

    out = []
    for path in sorted(Path(folder).rglob("*.png")):
        with Image.open(path) as image:
            out += grid_crops(np.asarray(image.convert("RGB")), size)
    return out
