"""HR training patches sampled on the fly from corpus images, where the detail is.

Patch centres are drawn with probability proportional to the local Laplacian magnitude
(measured on a reduced copy), optionally weighted by, or restricted to, an artist's mask.
No patch files are written; a few decoded images are kept in an LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyvips

MAP_SIDE = 256  # importance maps are computed at this long side
FLOOR = 0.02  # flat areas keep a little probability (relative to the mean)


@dataclass(frozen=True)
class PatchSource:
    image: str
    mask: str | None = None


def read_mask(path: str, width: int, height: int, cell: int = 1) -> np.ndarray:
    """An artist's mask (white = train here) resized to width x height, floats in [0, 1];
    with `cell` > 1, the mean over each whole cell x cell block (height // cell rows).

    The convention every sampler shares: "weight" scales by the mask, "restrict" keeps
    only where it is above one half, "ignore" does not read it.
    """
    mask = pyvips.Image.new_from_file(path).colourspace("b-w")[0]
    mask = mask.resize(width / mask.width, vscale=height / mask.height)
    if cell > 1:  # a box mean: a cell's value is exactly the share of it the artist allows
        mask = mask.crop(0, 0, width // cell * cell, height // cell * cell).shrink(cell, cell)
        width, height = width // cell, height // cell
    mask = mask.numpy().astype(np.float32)[:height, :width] / 255
    if mask.shape != (height, width):  # libvips rounds the size: repeat the last row/column
        mask = np.pad(mask, ((0, height - mask.shape[0]), (0, width - mask.shape[1])), "edge")
    return np.clip(mask, 0, 1)


def importance_map(source: PatchSource, mask_mode: str) -> tuple[np.ndarray, float]:
    """(probabilities over a reduced grid, grid-to-image scale)."""
    from scipy import ndimage  # not at workflow parse time (rules import this module)

    image = pyvips.Image.thumbnail(source.image, MAP_SIDE)
    if image.hasalpha():
        image = image.flatten(background=255)
    rgb = image.numpy().astype(np.float32) / 255
    luma = rgb if rgb.ndim == 2 else rgb[..., :3].mean(axis=2)
    detail = ndimage.gaussian_filter(np.abs(ndimage.laplace(luma)), 1.5)
    weights = detail + FLOOR * max(float(detail.mean()), 1e-6)
    if source.mask is not None and mask_mode != "ignore":
        mask = read_mask(source.mask, image.width, image.height)
        weights = weights * (mask > 0.5) if mask_mode == "restrict" else weights * mask
    total = weights.sum()
    if total <= 0:
        raise ValueError(f"{source.mask}: the mask leaves no area to sample from")
    reference = pyvips.Image.new_from_file(source.image)
    return weights / total, reference.width / image.width


class PatchSampler:
    def __init__(
        self,
        sources: list[PatchSource],
        gt_size: int,
        seed: int,
        mask_mode: str = "weight",
        cache_images: int = 8,
        jitter: float = 0.05,
    ):
        if not sources:
            raise ValueError("no training images to sample patches from")
        self.sources = sources
        self.gt_size = gt_size
        self.mask_mode = mask_mode
        self.jitter = jitter
        self.rng = np.random.default_rng(seed)
        self._maps: dict[int, tuple[np.ndarray, float]] = {}
        self._images: OrderedDict[int, pyvips.Image] = OrderedDict()
        self._cache_images = cache_images

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _image(self, index: int) -> pyvips.Image:
        if index in self._images:
            self._images.move_to_end(index)
            return self._images[index]
        image = pyvips.Image.new_from_file(self.sources[index].image)
        if image.hasalpha():
            image = image.flatten(background=255)
        self._images[index] = image.copy_memory()
        while len(self._images) > self._cache_images:
            self._images.popitem(last=False)
        return self._images[index]

    def _map(self, index: int):
        if index not in self._maps:
            self._maps[index] = importance_map(self.sources[index], self.mask_mode)
        return self._maps[index]

    def sample(self, count: int) -> np.ndarray:
        """(count, gt, gt, 3) uint8 patches, augmented."""
        patches = []
        for _ in range(count):
            index = int(self.rng.integers(len(self.sources)))
            image = self._image(index)
            probabilities, scale = self._map(index)
            cell = self.rng.choice(probabilities.size, p=probabilities.ravel())
            row, column = divmod(int(cell), probabilities.shape[1])
            size = min(self.gt_size, image.width, image.height)
            cx = (column + self.rng.random()) * scale
            cy = (row + self.rng.random()) * scale
            x0 = int(np.clip(cx - size / 2, 0, image.width - size))
            y0 = int(np.clip(cy - size / 2, 0, image.height - size))
            patch = image.crop(x0, y0, size, size).numpy()[..., :3]
            patches.append(self._augment(patch))
        return np.stack(patches)

    def _augment(self, patch: np.ndarray) -> np.ndarray:
        if self.rng.random() < 0.5:
            patch = patch[:, ::-1]
        if self.rng.random() < 0.5:
            patch = patch[::-1]
        patch = np.rot90(patch, int(self.rng.integers(4)))
        if self.jitter:
            contrast = 1 + self.rng.uniform(-self.jitter, self.jitter)
            brightness = self.rng.uniform(-self.jitter, self.jitter) * 255
            mean = patch.mean()
            patch = (patch.astype(np.float32) - mean) * contrast + mean + brightness
            patch = np.clip(patch, 0, 255).round()
        return np.ascontiguousarray(patch, dtype=np.uint8)
