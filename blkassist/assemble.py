"""Final assembly: canvas -> tiled, pyramidal BigTIFF, by streaming.

tifffile streams the canvas chunk by chunk into an uncompressed tiled TIFF (one TIFF tile
per canvas chunk, so every chunk is decoded once); libvips then builds the pyramid,
applies any fractional final resize, and compresses, reading that file tile by tile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyvips
import tifffile

from blkassist import canvas
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.provenance import file_record, versions

TIFF_TILE = 256


def plain_tile_size(chunk: int, width: int, height: int) -> int:
    """TIFF tile edge for the intermediate file: the canvas chunk (each chunk decoded once),
    halved while it is larger than the image (libvips refuses such tiles)."""
    edge = chunk
    while edge > min(width, height) and edge % 32 == 0:
        edge //= 2
    return edge if edge <= min(width, height) else 16


def _windows(canvas, edge: int):
    """Yield edge x edge windows of the canvas in row-major order, zero-padded at the border."""
    height, width, bands = canvas.shape
    for top in range(0, height, edge):
        for left in range(0, width, edge):
            block = np.asarray(canvas[top : top + edge, left : left + edge])
            if block.shape[:2] != (edge, edge):
                padded = np.zeros((edge, edge, bands), np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def write_plain_tiff(canvas, path: str | os.PathLike) -> None:
    """Uncompressed tiled BigTIFF of the canvas, window by window (memory: one chunk)."""
    height, width, bands = canvas.shape
    options = {"photometric": "rgb", "compression": None}
    if bands == 4:
        options["extrasamples"] = ("unassalpha",)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        if min(width, height) < 16:  # too small for TIFF tiles; and small enough to hold
            tif.write(np.asarray(canvas[:]), **options)
            return
        edge = plain_tile_size(canvas.chunks[0], width, height)
        tif.write(
            _windows(canvas, edge),
            shape=(height, width, bands),
            dtype=np.uint8,
            tile=(edge, edge),
            **options,
        )


def srgb_profile() -> bytes:
    """libvips' built-in sRGB ICC profile: the colour space every canvas is in."""
    pixel = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb")
    return pixel.icc_transform("srgb", input_profile="srgb").get("icc-profile-data")


def assemble(
    canvas,
    output: str | os.PathLike,
    final_size: tuple[int, int],
    resolution_ppmm: tuple[float, float],
    compression: str = "deflate",
    jpeg_quality: int = 95,
    scratch_dir: str | os.PathLike | None = None,
) -> None:
    """Write `output` (pyramidal tiled BigTIFF, sRGB ICC, resolution) from `canvas`."""
    output = Path(output)
    scratch = Path(scratch_dir or output.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    plain = scratch / f".{output.name}.plain-{os.getpid()}.tif"
    try:
        write_plain_tiff(canvas, plain)
        image = pyvips.Image.new_from_file(str(plain), access="sequential")
        height, width = canvas.shape[:2]
        if final_size != (width, height):
            image = image.resize(
                final_size[0] / width, vscale=final_size[1] / height, kernel="lanczos3"
            )
            if (image.width, image.height) != final_size:  # guard libvips' rounding
                image = image.crop(0, 0, *final_size)
        image = image.copy(xres=resolution_ppmm[0], yres=resolution_ppmm[1], interpretation="srgb")
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", srgb_profile())
        options = {
            "tile": True,
            "tile_width": TIFF_TILE,
            "tile_height": TIFF_TILE,
            "pyramid": True,
            "bigtiff": True,
            "compression": compression,
            "resunit": "inch",
        }
        if compression == "jpeg":
            options["Q"] = jpeg_quality
        elif compression in ("deflate", "lzw", "zstd"):
            options["predictor"] = "horizontal"
        with atomic_path(output) as tmp:
            image.write_to_file(str(tmp.with_suffix(".tif")), **options)
            tmp.with_suffix(".tif").rename(tmp)
    finally:
        plain.unlink(missing_ok=True)


def assemble_mural(
    allocation: str,
    report: str,
    weights: str | None,
    settings: dict,
    final_size: tuple[int, int],
    image: str,
    provenance: str,
) -> None:
    from blkassist.sr.passes import require_complete

    require_complete(allocation)
    record = read_json(allocation)
    source = read_json(report)
    final = canvas.open_canvas(record["canvas"])
    factor = final_size[0] / source["width"], final_size[1] / source["height"]
    assemble(
        final,
        image,
        final_size,
        (source["xres"] * factor[0], source["yres"] * factor[1]),
        settings["compression"],
        settings["jpeg_quality"],
    )
    write_json(
        provenance,
        {
            "result": file_record(image),
            "size": list(final_size),
            "source": {
                key: source.get(key) for key in ("path", "sha256", "width", "height", "pages")
            },
            "model": {
                "name": settings["model"],
                "weights": file_record(weights) if weights else None,
            },
            "settings": settings,
            "final_pass": record["plan"],
            "versions": versions(),
        },
    )
