"""Final assembly: canvas -> tiled, pyramidal BigTIFF, by streaming, with no intermediate.

The canvas is handed to libvips as an uncompressed PNG stream (stored deflate blocks, so
encoding is a copy plus checksums) through a pipe: libvips reads it strictly top
to bottom, builds the pyramid, applies any fractional final resize and compresses, while a
writer thread makes the next pieces. Memory is one row of canvas chunks and a pipe's
buffer; nothing full-size is written besides the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import struct
import threading
import zlib
from collections.abc import Iterator

import numpy as np
import pyvips

from blkassist import canvas
from blkassist.errors import CanvasError
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.provenance import file_record, versions

TIFF_TILE = 256
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # grey, grey+alpha, RGB, RGBA

log = logging.getLogger(__name__)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


PIPE_BUFFER_BYTES = 1 << 20  # Linux's default limit for an unprivileged process
PNG_ROWS_PER_PIECE = 64  # stream granularity: a few MB per piece at any mural width


def png_stream(array) -> Iterator[bytes]:
    """An 8-bit PNG of a (height, width, bands) canvas, in pieces, reading one row of
    canvas chunks at a time.

    Deflate level 0 stores the rows as they are: libvips decodes it at copy speed, and
    no filtering or entropy coding is spent on data that is compressed again at the end.
    """
    height, width, bands = array.shape
    yield b"\x89PNG\r\n\x1a\n"
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPE[bands], 0, 0, 0)
    yield _png_chunk(b"IHDR", header)
    stored = zlib.compressobj(0)
    rows = array.chunks[0]  # the inner chunk's rows: one zarr read per row of chunks
    for top in range(0, height, rows):
        try:
            strip = np.asarray(array[top : top + rows])
        except Exception as error:
            where = getattr(array.store, "root", array.store)
            raise CanvasError(
                f"{where}: rows {top}-{min(top + rows, height) - 1} cannot be read "
                f"({type(error).__name__}: {error}). The canvas is damaged; delete "
                f"{where} and rerun the same command to recompute that pass."
            ) from error
        for first in range(0, strip.shape[0], PNG_ROWS_PER_PIECE):
            part = strip[first : first + PNG_ROWS_PER_PIECE]
            lines = np.zeros((part.shape[0], 1 + width * bands), np.uint8)  # filter byte 0
            lines[:, 1:] = part.reshape(part.shape[0], -1)
            if piece := stored.compress(lines):
                yield _png_chunk(b"IDAT", piece)
    yield _png_chunk(b"IDAT", stored.flush())
    yield _png_chunk(b"IEND", b"")


class CanvasStream:
    """A sequential libvips image of a canvas, fed through a pipe by a writer thread.

    libvips reads the pipe in C (4 KB at a time: through a Python callback that was a
    quarter of a million GIL round trips per 0.3 Gpx), and its tiled pyramid save runs
    mostly in one thread while the writer thread makes the next pieces (zarr reads, PNG
    framing). Use as a context manager around the write: the writer stops when the write
    ends, however it ends, and a canvas that cannot be read is reported as such instead
    of as libvips' "truncated PNG".
    """

    def __init__(self, array):
        self._error: BaseException | None = None
        self._stop = threading.Event()
        read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)  # so the writer can notice a stop request
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a larger buffer, fewer context switches
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._write_end, fcntl.F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
        # The writer starts first: opening the image reads the PNG header from the pipe.
        self._thread = threading.Thread(
            target=self._write, args=(array,), name="canvas-writer", daemon=True
        )
        self._thread.start()
        try:
            # libvips keeps its own duplicate of the read end
            self.image = pyvips.Image.new_from_source(
                pyvips.Source.new_from_descriptor(read_end),
                "",
                access="sequential",
                fail_on="truncated",  # a stream cut short is an error, never a black band
            )
        except BaseException:
            self._finish()
            raise
        finally:
            os.close(read_end)

    def _write(self, array) -> None:
        try:
            for piece in png_stream(array):
                view = memoryview(piece)
                while view and not self._stop.is_set():
                    # libvips may stop reading at any time (an error, or the PNG's end):
                    # wait for room in short slices so a stop request is always seen
                    if select.select([], [self._write_end], [], 0.1)[1]:
                        with contextlib.suppress(BlockingIOError):
                            view = view[os.write(self._write_end, view) :]
                if self._stop.is_set():
                    return
        except BrokenPipeError:
            pass  # libvips stopped reading: its own error says why
        except BaseException as error:  # re-raised in the saving thread by __exit__
            self._error = error
        finally:
            os.close(self._write_end)

    def _finish(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> CanvasStream:
        return self

    def __exit__(self, *exc) -> None:
        self._finish()
        if self._error is not None:
            raise self._error


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
    # the stream closes (raising a canvas read error) before the result is committed
    with atomic_path(output) as tmp, CanvasStream(array) as stream:
        _save_pyramid(stream.image, tmp, final_size, resolution_ppmm, compression, jpeg_quality)


def _save_pyramid(image, path, final_size, resolution_ppmm, compression, jpeg_quality):
    width, height = image.width, image.height
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
    image.tiffsave(str(path), **options)


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
    licences: list[dict] | None = None,
) -> None:
    """`path`: the SR/diffusion choice and why; `refinement`: the diffusion path's report
    (per-pass provenance and seam QA); `licences`: the terms of every model the pixels
    depend on (blkassist.licences.mural); all recorded in the provenance."""
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
            "licences": licences,
            "versions": versions(),
        },
    )
