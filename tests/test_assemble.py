"""The final file: tiled pyramidal BigTIFF, written by streaming, that other tools read."""

from __future__ import annotations

import logging
import threading
import warnings

import numpy as np
import pytest
import pyvips
import tifffile

from blkassist import canvas
from blkassist.assemble import assemble, png_stream, srgb_profile
from blkassist.errors import CanvasError
from tests.conftest import textured


def make_canvas(tmp_path, pixels, chunk=128):
    store = canvas.create(
        tmp_path / "c.zarr", pixels.shape[1], pixels.shape[0], pixels.shape[2], chunk
    )
    store[:] = pixels
    return store


@pytest.mark.parametrize(("bands", "chunk"), [(3, 128), (4, 128), (3, 512), (3, 1024), (4, 1024)])
def test_pyramidal_bigtiff_readable_by_tifffile_and_pyvips(tmp_path, bands, chunk):
    pixels = textured(700, 900, bands=bands)
    out = tmp_path / "final.tif"
    store = make_canvas(tmp_path, pixels, chunk)
    # blocks that are multiples of the inner chunk, and larger, are shards
    assert (store.shards is not None) == (chunk > canvas.INNER_CHUNK)
    assemble(store, out, (900, 700), (11.811, 11.811), "deflate")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
        assert page.shape == (700, 900, bands)
        assert np.array_equal(page.asarray(), pixels)  # lossless
        assert len(tif.pages) >= 3  # 900 -> 450 -> 225 pyramid levels
        assert tif.pages[1].shape[:2] == (350, 450)
        assert page.tags["InterColorProfile"].value == srgb_profile()
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == (
            pytest.approx(300, rel=1e-3)
        )
    image = pyvips.Image.new_from_file(str(out))
    assert (image.width, image.height, image.bands) == (900, 700, bands)
    assert image.xres == pytest.approx(11.811, rel=1e-3)


def test_fractional_final_resize_gives_exact_size(tmp_path):
    pixels = textured(300, 400)
    out = tmp_path / "resized.tif"
    assemble(make_canvas(tmp_path, pixels), out, (333, 250), (1.0, 1.0), "lzw")
    image = pyvips.Image.new_from_file(str(out))
    assert (image.width, image.height) == (333, 250)
    reference = pyvips.Image.new_from_array(pixels).resize(
        333 / 400, vscale=250 / 300, kernel="lanczos3"
    )
    assert np.abs(image.numpy().astype(int) - reference.numpy()).mean() < 1


def test_jpeg_compression_and_no_leftovers(tmp_path):
    pixels = textured(256, 256)
    out = tmp_path / "out" / "final.tif"
    assemble(make_canvas(tmp_path, pixels), out, (256, 256), (1, 1), "jpeg", jpeg_quality=90)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
    assert sorted(p.name for p in out.parent.iterdir()) == ["final.tif"]


@pytest.mark.parametrize(
    ("bands", "compression", "final"),
    [(3, "deflate", (600, 400)), (4, "lzw", (600, 400)), (3, "jpeg", (530, 353)),
     (4, "none", (530, 353))],
)  # fmt: skip
def test_result_is_one_clean_pyramid_without_warnings(tmp_path, caplog, bands, compression, final):
    """No tifffile or libvips warning on reading (warnings are errors here), the reduced
    levels are one series' levels, ICC and resolution kept, nothing else carried over."""
    pixels = textured(400, 600, bands=bands)
    out = tmp_path / "final.tif"
    assemble(make_canvas(tmp_path, pixels, 64), out, final, (11.811, 11.811), compression)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caplog.set_level(logging.WARNING)
        with tifffile.TiffFile(out) as tif:
            assert tif.is_bigtiff
            (series,) = tif.series
            shapes = [level.shape for level in series.levels]
            full = series.levels[0].asarray()
            page = tif.pages[0]
            assert "ImageDescription" not in page.tags
            assert page.tags["InterColorProfile"].value == srgb_profile()
            assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == (
                pytest.approx(300, rel=1e-3)
            )
        image = pyvips.Image.new_from_file(str(out))
        assert image.avg() > 0  # decodes every pixel
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert shapes[0] == (final[1], final[0], bands)
    assert len(shapes) >= 2
    assert abs(shapes[1][0] - final[1] / 2) <= 1 and abs(shapes[1][1] - final[0] / 2) <= 1
    if final == (600, 400) and compression != "jpeg":
        assert np.array_equal(full, pixels)


def test_png_stream_is_the_canvas_exactly(tmp_path):
    """The stream libvips reads is the canvas, row for row, for every band count."""
    for bands in (1, 2, 3, 4):
        pixels = textured(77, 130, bands=bands)
        store = make_canvas(tmp_path, pixels, 32)
        png = b"".join(png_stream(store))
        assert np.array_equal(
            pyvips.Image.new_from_buffer(png, "").numpy().reshape(pixels.shape), pixels
        )


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "canvas-writer" and t.is_alive()]


@pytest.mark.timeout(120)
def test_a_damaged_canvas_is_named_and_nothing_is_written(tmp_path):
    """A canvas chunk damaged on disk stops the assembly with the canvas named and the
    fix, not libvips' "truncated PNG", and leaves no result and no writer thread behind."""
    pixels = textured(1500, 1100)
    store = make_canvas(tmp_path, pixels, 1024)  # 2x2 shards of 512-px chunks
    shard = tmp_path / "c.zarr" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[:16] = bytes(16)  # the first chunk's compressor header
    shard.write_bytes(bytes(data))
    out = tmp_path / "final.tif"
    with pytest.raises(CanvasError, match=r"c\.zarr: rows 1024-1499 cannot be read.*delete"):
        assemble(store, out, (1100, 1500), (11.811, 11.811), "deflate")
    assert not out.exists() and not list(tmp_path.glob("*.tif*"))
    assert not _writer_threads()


@pytest.mark.timeout(120)
def test_a_write_that_fails_early_stops_the_canvas_writer(tmp_path):
    """libvips refusing the write before it reads anything must not leave the writer
    blocked on a full pipe (the canvas is several pipe buffers long)."""
    store = make_canvas(tmp_path, textured(1500, 1100), 512)
    with pytest.raises(pyvips.Error):
        assemble(store, tmp_path / "final.tif", (1100, 1500), (1.0, 1.0), "no-such-codec")
    assert not _writer_threads()
    assert not list(tmp_path.glob("*.tif*"))
