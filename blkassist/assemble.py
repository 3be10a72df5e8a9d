"""Final assembly: canvas -> tiled, pyramidal BigTIFF, by streaming, with no intermediate.

The canvas is handed to libvips as an uncompressed PNG stream (stored deflate blocks, so
encoding is a copy plus checksums) through a custom source: libvips reads it strictly top
to bottom, builds the pyramid, applies any fractional final resize and compresses. Memory
is one row of canvas chunks; nothing full-size is written besides the result.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pyvips

from blkassist import canvas
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.provenance import file_record, versions

TIFF_TILE = 256
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # grey, grey+alpha, RGB, RGBA

log = logging.getLogger(__name__)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_stream(array) -> Iterator[bytes]:
    """An 8-bit PNG of a (height, width, bands) canvas, in pieces, one chunk row at a time.

    Deflate level 0 stores the rows as they are: libvips decodes it at copy speed, and
    no filtering or entropy coding is spent on data that is compressed again at the end.
    """
    height, width, bands = array.shape
    yield b"\x89PNG\r\n\x1a\n"
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPE[bands], 0, 0, 0)
    yield _png_chunk(b"IHDR", header)
    stored = zlib.compressobj(0)
    rows = array.chunks[0]  # the inner chunk: 256 rows for a sharded canvas
    for top in range(0, height, rows):
        strip = np.asarray(array[top : top + rows])
        lines = np.zeros((strip.shape[0], 1 + width * bands), np.uint8)  # filter byte 0
        lines[:, 1:] = strip.reshape(strip.shape[0], -1)
        if piece := stored.compress(lines):
            yield _png_chunk(b"IDAT", piece)
    yield _png_chunk(b"IDAT", stored.flush())
    yield _png_chunk(b"IEND", b"")


def stream_canvas(array) -> tuple[pyvips.Image, pyvips.SourceCustom]:
    """A sequential libvips image that reads `array` as libvips asks for it, and its source
    (keep a reference to it until the image is written: it holds the Python callback)."""
    pieces = png_stream(array)
    pending = memoryview(b"")

    def read(size: int) -> bytes:
        nonlocal pending
        while not len(pending):
            piece = next(pieces, None)
            if piece is None:
                return b""
            pending = memoryview(piece)
        out, pending = pending[:size], pending[size:]
        return bytes(out)

    source = pyvips.SourceCustom()
    source.on_read(read)
    return pyvips.Image.new_from_source(source, "", access="sequential"), source


def srgb_profile() -> bytes:
    """libvips' built-in sRGB ICC profile: the colour space every canvas is in."""
    pixel = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb")
    return pixel.icc_transform("srgb", input_profile="srgb").get("icc-profile-data")


def assemble(
    array,
    output: str | os.PathLike,
    final_size: tuple[int, int],
    resolution_ppmm: tuple[float, float],
    compression: str = "deflate",
    jpeg_quality: int = 95,
) -> None:
    """Write `output` from the canvas `array`: a tiled BigTIFF whose reduced levels follow
    the full image (one pyramid), with the sRGB ICC profile and the resolution; no other
    metadata (no stale description, no loader fields)."""
    height, width = array.shape[:2]
    image, _source = stream_canvas(array)
    if final_size != (width, height):
        image = image.resize(
            final_size[0] / width, vscale=final_size[1] / height, kernel="lanczos3"
        )
        if (image.width, image.height) != final_size:  # guard libvips' rounding
            image = image.crop(0, 0, *final_size)
    image = image.copy(xres=resolution_ppmm[0], yres=resolution_ppmm[1], interpretation="srgb")
    for name in image.get_fields():
        if name.startswith(("png-", "exif", "xmp", "image-description", "icc-profile")):
            image.remove(name)
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
    elif compression in ("deflate", "lzw"):
        options["predictor"] = "horizontal"
    with atomic_path(output) as tmp:
        image.write_to_file(str(tmp.with_suffix(".tif")), **options)
        tmp.with_suffix(".tif").rename(tmp)


def assemble_mural(
    allocation: str,
    report: str,
    weights: str | None,
    settings: dict,
    final_size: tuple[int, int],
    image: str,
    provenance: str,
    path: dict | None = None,
    refinement: str | None = None,
) -> None:
    """`path`: the SR/diffusion choice and why; `refinement`: the diffusion path's report
    (per-pass provenance and seam QA), recorded in the provenance."""
    from blkassist.sr.passes import require_complete

    require_complete(allocation)
    record = read_json(allocation)
    if path:
        log.info("mural path: %s (%s)", path["path"], path["reason"])
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
            "path": path,
            "refinement": read_json(refinement) if refinement else None,
            "versions": versions(),
        },
    )
