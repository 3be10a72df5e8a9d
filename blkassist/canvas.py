"""Chunked zarr canvases: the only place a mural's pixels live between jobs.

A canvas is an (height, width, bands) uint8 array. Writers own square blocks (one tile's
output each); when a block is a multiple of 512 pixels it is a zarr shard of 512-pixel
inner chunks, so readers (the next pass, the assembly) can fetch small pieces without
decoding whole blocks. Memory depends on the tile size, never the canvas size.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyvips
import zarr
from zarr.codecs import BloscCodec

from blkassist.fsutil import atomic_path, read_json

# Fast and lossless: intermediate canvases are written once, read once. Byte-wise lz4
# without bit shuffling: on uint8 pixels bit shuffling halved the ratio on line art and
# tripled decoding time (measured on a 4x line-art canvas; noise stores ~20 % larger).
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")

# Inner chunks of a shard: zarr's cost per chunk read dominates streaming a canvas, and
# 512-px chunks read a row of shards 3x faster than 256-px ones (bench/upscale_scaling.py).
INNER_CHUNK = 512


def create(path: str | os.PathLike, width: int, height: int, bands: int, chunk: int, attrs=None):
    """Create an empty canvas at `path` whose writers own `chunk`-sized square blocks,
    replacing whatever was there."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    sharded = chunk > INNER_CHUNK and chunk % INNER_CHUNK == 0
    array = zarr.create_array(
        store=str(path),
        shape=(height, width, bands),
        chunks=(INNER_CHUNK, INNER_CHUNK, bands) if sharded else (chunk, chunk, bands),
        shards=(chunk, chunk, bands) if sharded else None,
        dtype="uint8",
        compressors=COMPRESSOR,
        fill_value=0,
        write_data=True,
    )
    array.attrs.update(attrs or {})
    return array


def open_canvas(path: str | os.PathLike, mode: str = "r"):
    return zarr.open_array(str(path), mode=mode)


def canvas_path(reference: str) -> str:
    """A canvas is named directly (.zarr) or by its pass's allocation record (.json)."""
    return read_json(reference)["canvas"] if reference.endswith(".json") else reference


def open_sized(reference: str, width: int, height: int, reader: str) -> tuple[str, zarr.Array]:
    """(path, array) of the canvas `reference` names, refused unless it is `width` x
    `height`: what `reader` (a pass) was planned for."""
    path = canvas_path(reference)
    array = open_canvas(path)
    if array.shape[:2] != (height, width):
        raise RuntimeError(
            f"canvas {path} is {array.shape[1]}x{array.shape[0]}, but {reader} expects "
            f"{width}x{height}; rerun with --forceall for this mural"
        )
    return path, array


def ingest(image: pyvips.Image, path: str | os.PathLike, chunk: int, attrs=None) -> None:
    """Stream `image` into a new canvas at `path`, one row of chunks at a time.

    The store is built under a temporary name and renamed into place when complete.
    """
    with atomic_path(path) as tmp:
        canvas = create(tmp, image.width, image.height, image.bands, chunk, attrs)
        # A region fetches in the calling thread, strictly top to bottom, which is what a
        # sequential-access source allows (crop().numpy() would read ahead out of order).
        region = pyvips.Region.new(image)
        for top in range(0, image.height, chunk):
            rows = min(chunk, image.height - top)
            strip = np.frombuffer(region.fetch(0, top, image.width, rows), np.uint8)
            canvas[top : top + rows] = strip.reshape(rows, image.width, image.bands)


def save_piece(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """A small array (a re-sampled window, a re-blended block) as its own zarr store,
    written whole under a temporary name, then renamed into place."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    with atomic_path(path) as tmp:
        zarr.create_array(
            store=str(tmp), data=np.ascontiguousarray(pixels), compressors=COMPRESSOR,
            chunks=pixels.shape, write_data=True,
        )  # fmt: skip


class LayeredCanvas:
    """A canvas read with some boxes replaced by other arrays (a re-roll's blended blocks or
    SR tiles): it reads like the zarr array (shape, dtype, chunks, slicing) and the base
    store is never written. `overlays`: ((x0, y0, x1, y1), path), disjoint boxes."""

    def __init__(self, base, overlays):
        self.base = base
        self.overlays = [(tuple(box), str(path)) for box, path in overlays]
        self.shape, self.dtype, self.chunks = base.shape, base.dtype, base.chunks
        self.store = base.store
        self._opened: dict[str, object] = {}

    def _piece(self, path: str):
        if path not in self._opened:
            self._opened[path] = open_canvas(path)
        return self._opened[path]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(not isinstance(k, slice) or k.step not in (None, 1) for k in key[:2]):
            raise TypeError("a layered canvas is read by row and column slices")
        key = (*key, *[slice(None)] * (2 - len(key)))
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key[:2], self.shape, strict=False))
        pixels = np.array(self.base[key])
        for (bx0, by0, bx1, by1), path in self.overlays:
            ax0, ay0, ax1, ay1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
            if ax0 < ax1 and ay0 < ay1:
                piece = self._piece(path)[ay0 - by0 : ay1 - by0, ax0 - bx0 : ax1 - bx0]
                pixels[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = np.asarray(piece)[
                    (slice(None), slice(None), *key[2:])
                ]
        return pixels


def open_view(spec: dict | str):
    """A canvas as its readers see it: `spec` is a canvas path (.zarr), an allocation
    record (.json), or {"canvas": either, "overlays": [{"box": [x0, y0, x1, y1], "path":
    piece.zarr}, ...]} for a canvas with re-rolled pieces laid over it."""
    spec = {"canvas": spec} if isinstance(spec, str | os.PathLike) else spec
    base = open_canvas(canvas_path(str(spec["canvas"])))
    overlays = [(o["box"], o["path"]) for o in spec.get("overlays") or ()]
    return LayeredCanvas(base, overlays) if overlays else base
