"""Texture measured per cell of a scan, and texture features of any crop on the cell grid.

One pass over the image at native resolution (no reduction: a reduced copy loses the very
hatching and grain we look for), in strips, accumulates per cell of `cell` x `cell` pixels:
the gradient structure tensor (sums of gx^2, gy^2, gx*gy) and a gradient-magnitude weighted
orientation histogram. Any crop aligned to the grid then gets its features from sums over
its cells (integral images), so scoring every candidate position costs almost nothing.

Features of a crop:
- energy: mean squared luma gradient (luma 0-1, Gaussian derivative sigma 1 px): the
  high-frequency energy; blank paper is ~1e-4, ink hatching ~1e-2.
- cell coherence: the energy-weighted mean of each cell's structure-tensor coherence; high
  when every neighbourhood has one stroke direction (hatch, flowing strokes), low where
  two directions cross in each neighbourhood (cross-hatch) or none dominates (grain).
- anisotropy: the share of the orientation histogram above its isotropic floor.
- peak masses: the share of the oriented part within +-10 degrees of its strongest
  direction, and of the strongest direction at least 30 degrees away from it.

Classes: hatch (one dominant direction everywhere), cross-hatch (two directions crossing in
each neighbourhood), stroke (long coherent strokes whose direction flows across the crop),
grain (isotropic fine energy: stipple, paper grain, speckle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvips

PRIMITIVES = ("hatch", "cross-hatch", "grain", "stroke")
BINS = 36  # orientation histogram: 5 degree bins over 180 degrees
PEAK_HALF_WIDTH = 2  # bins either side of a peak counted as its mass (+-10 degrees)
SECOND_PEAK_GAP = 6  # a second direction is at least this many bins (30 degrees) away
SIGMA = 1.0  # Gaussian derivative scale in pixels
MARGIN = 4  # strip overlap: the derivative kernel radius (4 sigma), exact at seams
STRIP_PIXELS = 512  # rows of float work at a time: past the 8-bit luma, memory is flat

FLOOR_PERCENTILE = 20  # the isotropic floor of an orientation histogram

# Class thresholds, measured on the synthetic primitives of tests/test_texture.py.
MIN_ANISOTROPY = 0.3  # less of the histogram above its floor: no real direction
PEAK_SHARE = 0.25  # a direction holding this share of the oriented part is a real one
HATCH_PEAK = 0.6  # one direction holding this share is hatching
CROSS_CELL = 0.9  # two directions and cells below this coherence: they cross everywhere
STROKE_CELL = 0.55  # locally one direction (but flowing): strokes


@dataclass(frozen=True)
class CellGrid:
    """Per-cell sums over an image: tensor (rows, cols, 3): gx^2, gy^2, gx*gy; histogram
    (rows, cols, BINS) of gradient orientation weighted by gradient magnitude."""

    cell: int
    width: int
    height: int
    tensor: np.ndarray
    histogram: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.tensor.shape[:2]


def read_luma(path: str) -> np.ndarray:
    """The image's luma as uint8 (alpha flattened onto white paper)."""
    image = pyvips.Image.new_from_file(path)
    if image.hasalpha():
        image = image.flatten(background=255)
    if image.bands >= 3:
        image = image.colourspace("b-w")
    return image[0].cast("uchar").numpy()


def cell_grid(luma: np.ndarray, cell: int) -> CellGrid:
    """Per-cell texture sums of a uint8 luma image; a partial last row/column is left out."""
    from scipy import ndimage  # not at workflow parse time (rules import this package)

    height, width = luma.shape
    rows, cols = height // cell, width // cell
    tensor = np.zeros((rows, cols, 3), np.float64)
    histogram = np.zeros((rows, cols, BINS), np.float64)
    strip_cells = max(1, STRIP_PIXELS // cell)
    for r0 in range(0, rows, strip_cells):
        r1 = min(rows, r0 + strip_cells)
        y0, y1 = r0 * cell, r1 * cell
        lo, hi = max(0, y0 - MARGIN), min(height, y1 + MARGIN)
        slab = luma[lo:hi, : cols * cell].astype(np.float32) / 255
        gy = ndimage.gaussian_filter(slab, SIGMA, order=(1, 0), mode="nearest")
        gx = ndimage.gaussian_filter(slab, SIGMA, order=(0, 1), mode="nearest")
        gx, gy = gx[y0 - lo : y1 - lo], gy[y0 - lo : y1 - lo]
        shape = (r1 - r0, cell, cols, cell)
        for channel, values in enumerate((gx * gx, gy * gy, gx * gy)):
            tensor[r0:r1, :, channel] = values.reshape(shape).sum(axis=(1, 3))
        angle = np.arctan2(gy, gx) % np.pi
        bins = np.minimum((angle * (BINS / np.pi)).astype(np.int32), BINS - 1)
        # index (cell row * cols + cell column) * BINS + bin: a column of row offsets
        # broadcast against a row of column offsets
        row_offset = (np.arange(y1 - y0, dtype=np.int32) // cell * (cols * BINS))[:, None]
        column_offset = (np.arange(cols * cell, dtype=np.int32) // cell * BINS)[None, :]
        counts = np.bincount(
            (bins + row_offset + column_offset).ravel(),
            weights=np.hypot(gx, gy).ravel(),
            minlength=(r1 - r0) * cols * BINS,
        )
        histogram[r0:r1] = counts.reshape(r1 - r0, cols, BINS)
    return CellGrid(cell, width, height, tensor, histogram)


def _coherence(tensor: np.ndarray) -> np.ndarray:
    jxx, jyy, jxy = tensor[..., 0], tensor[..., 1], tensor[..., 2]
    trace = jxx + jyy
    return np.hypot(jxx - jyy, 2 * jxy) / np.maximum(trace, 1e-12)


def window_sums(values: np.ndarray, size: int) -> np.ndarray:
    """Sums over every size x size window of a (rows, cols, ...) array: (rows-size+1, ...)."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1, *values.shape[2:]))
    integral[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    return (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )


@dataclass(frozen=True)
class WindowFeatures:
    """Features of every size x size-cell window (arrays of shape (rows', cols'))."""

    energy: np.ndarray
    cell_coherence: np.ndarray
    anisotropy: np.ndarray  # share of the orientation histogram above its isotropic floor
    peak: np.ndarray  # share of the oriented part in the strongest direction
    second_peak: np.ndarray  # ... in the strongest one at least 30 degrees away
    orientation: np.ndarray  # stroke direction of the strongest peak, degrees in [0, 180)


def window_features(grid: CellGrid, size: int) -> WindowFeatures:
    """Features of every crop of `size` cells whose corner is on the cell grid."""
    trace = grid.tensor[..., 0] + grid.tensor[..., 1]
    pixels = (size * grid.cell) ** 2
    weight = window_sums(trace, size)
    weighted_coherence = window_sums(trace * _coherence(grid.tensor), size)
    return WindowFeatures(
        energy=weight / pixels,
        cell_coherence=weighted_coherence / np.maximum(weight, 1e-12),
        **orientation_peaks(window_sums(grid.histogram, size)),
    )


def orientation_peaks(histogram: np.ndarray) -> dict[str, np.ndarray]:
    """Anisotropy and the two strongest directions of (..., BINS) histograms.

    The histogram is read as an isotropic floor (dots, grain, paper: every direction
    alike) plus oriented marks; the peaks are shares of the oriented part only, so
    stippling over hatching does not hide the hatching.
    """
    total = np.maximum(histogram.sum(axis=-1, keepdims=True), 1e-12)
    share = histogram / total
    floor = np.percentile(share, FLOOR_PERCENTILE, axis=-1, keepdims=True)
    oriented = np.maximum(share - floor, 0)
    anisotropy = oriented.sum(axis=-1)
    oriented = oriented / np.maximum(anisotropy[..., None], 1e-12)
    mass = sum(np.roll(oriented, k, axis=-1) for k in range(-PEAK_HALF_WIDTH, PEAK_HALF_WIDTH + 1))
    first = mass.argmax(axis=-1)
    distance = np.abs(np.arange(BINS) - first[..., None])
    distance = np.minimum(distance, BINS - distance)
    second = np.where(distance >= SECOND_PEAK_GAP, mass, 0.0).max(axis=-1)
    gradient_degrees = (first + 0.5) * (180 / BINS)
    return {
        "anisotropy": anisotropy,
        "peak": np.take_along_axis(mass, first[..., None], axis=-1)[..., 0],
        "second_peak": second,
        "orientation": (gradient_degrees + 90) % 180,  # strokes run across the gradient
    }


def classify(features: WindowFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(index into PRIMITIVES, purity in [0, 1]) of every window; purity says how clear an
    example of its class the window is."""
    f = features
    oriented = f.anisotropy >= MIN_ANISOTROPY
    crossing = oriented & (f.second_peak >= PEAK_SHARE) & (f.cell_coherence < CROSS_CELL)
    hatch = oriented & (f.peak >= HATCH_PEAK)
    stroke = f.cell_coherence >= STROKE_CELL
    names = ("cross-hatch", "hatch", "stroke")
    primitive = np.select(
        [crossing, hatch, stroke], [PRIMITIVES.index(n) for n in names],
        default=PRIMITIVES.index("grain"),
    )  # fmt: skip
    purity = np.select(
        [crossing, hatch, stroke],
        [f.anisotropy * (f.peak + f.second_peak) * (1 - f.cell_coherence / 2),
         f.anisotropy * f.peak * (1 - f.second_peak),
         f.cell_coherence * (1 - f.anisotropy * f.peak)],
        default=(1 - f.anisotropy) * (1 - f.cell_coherence),
    )  # fmt: skip
    return primitive, np.clip(purity, 0, 1)
