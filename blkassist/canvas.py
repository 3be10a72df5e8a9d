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

from blkassist.fsutil import atomic_path

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
