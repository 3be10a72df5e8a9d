"""Every common kind of source is probed and streamed into an 8-bit sRGB canvas."""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
import tifffile
from PIL import Image

from blkassist import canvas
from blkassist.errors import InputImageError
from blkassist.probe import header_size, open_as_srgb8, probe
from tests.conftest import textured

LIMIT = 10**8


def ingest_to_array(path, tmp_path, chunk=32) -> np.ndarray:
    store = tmp_path / f"{path.stem}.zarr"
    canvas.ingest(open_as_srgb8(path, LIMIT), store, chunk)
    return np.asarray(canvas.open_canvas(store)[:])


def test_rgb_png_odd_size_is_exact(tmp_path):
    pixels = textured(53, 37)
    Image.fromarray(pixels).save(tmp_path / "odd.png")
    assert np.array_equal(ingest_to_array(tmp_path / "odd.png", tmp_path), pixels)


def test_16bit_rgb_tiff_is_scaled_to_8bit(tmp_path):
    wide = textured(40, 50).astype(np.uint16) * 257 + 100
    tifffile.imwrite(tmp_path / "deep.tif", wide, photometric="rgb")
    result = ingest_to_array(tmp_path / "deep.tif", tmp_path)
    assert result.dtype == np.uint8
    assert np.abs(result.astype(int) - np.round(wide / 257).astype(int)).max() <= 1


def test_bigtiff_tiled_and_gray_16bit(tmp_path):
    gray = (textured(70, 90, bands=1)[..., 0].astype(np.uint16)) * 257
    tifffile.imwrite(tmp_path / "big.tif", gray, bigtiff=True, tile=(32, 32))
    result = ingest_to_array(tmp_path / "big.tif", tmp_path)
    assert result.shape == (70, 90, 3)
    assert np.array_equal(result[..., 0], result[..., 2])
    assert np.abs(result[..., 1].astype(int) - gray // 257).max() <= 1


def test_rgba_keeps_alpha_exactly(tmp_path):
    pixels = textured(30, 41, bands=4)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    result = ingest_to_array(tmp_path / "alpha.png", tmp_path)
    assert result.shape == (30, 41, 4)
    assert np.array_equal(result, pixels)


def test_palette_png_becomes_rgb(tmp_path):
    rgb = Image.fromarray(textured(33, 35)).quantize(colors=16)
    rgb.save(tmp_path / "palette.png")
    expected = np.asarray(rgb.convert("RGB"))
    assert np.array_equal(ingest_to_array(tmp_path / "palette.png", tmp_path), expected)


def test_jpeg_matches_a_reference_decoder(tmp_path):
    Image.fromarray(textured(64, 48)).save(tmp_path / "photo.jpg", quality=90)
    expected = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    result = ingest_to_array(tmp_path / "photo.jpg", tmp_path)
    assert np.abs(result.astype(int) - expected).max() <= 2


def test_cmyk_tiff_is_converted_through_a_profile(tmp_path):
    cmyk = np.zeros((20, 20, 4), np.uint8)
    cmyk[:, 10:, 3] = 255  # right half full black ink, left half bare paper
    tifffile.imwrite(tmp_path / "print.tif", cmyk, photometric="separated")
    result = ingest_to_array(tmp_path / "print.tif", tmp_path)
    assert result.shape == (20, 20, 3)
    assert result[:, :10].min() > 220  # paper is white
    assert result[:, 10:].max() < 60  # black ink is dark


def test_embedded_icc_profile_is_honoured(tmp_path):
    pixels = textured(24, 24)
    image = pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")
    p3 = image.icc_transform("p3", input_profile="srgb").get("icc-profile-data")
    tagged = pyvips.Image.new_from_array(pixels).copy(interpretation="srgb")
    tagged.set_type(pyvips.GValue.blob_type, "icc-profile-data", p3)
    tagged.write_to_file(str(tmp_path / "p3.png"))
    result = ingest_to_array(tmp_path / "p3.png", tmp_path)
    expected = tagged.icc_transform("srgb", embedded=True).numpy()
    assert np.abs(result.astype(int) - expected).max() <= 1
    assert np.abs(result.astype(int) - pixels).max() > 5  # the profile really changed colours


def test_probe_reports_what_the_file_is(tmp_path):
    tifffile.imwrite(
        tmp_path / "scan.tif",
        textured(20, 30),
        photometric="rgb",
        resolution=(300, 300),
        resolutionunit="INCH",
    )
    info = probe(tmp_path / "scan.tif", LIMIT)
    assert (info.width, info.height, info.bands, info.has_alpha) == (30, 20, 3, False)
    assert info.xres == pytest.approx(300 / 25.4, rel=1e-3)
    assert len(info.sha256) == 64


# Bad input: each error names the file and says what to do, before any heavy work.


def _truncated(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    Image.fromarray(textured(300, 300)).save(full)
    data = full.read_bytes()
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_truncated_file_is_refused_with_its_name(tmp_path, suffix):
    bad = _truncated(tmp_path, suffix)
    with pytest.raises(InputImageError, match=r"truncated") as error:
        probe(bad, LIMIT)
    assert str(bad) in str(error.value)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputImageError, match=r"empty\.tif: file is empty"):
        probe(tmp_path / "empty.tif", LIMIT)


def test_text_file_named_tif(tmp_path):
    (tmp_path / "notes.tif").write_text("this is not an image\n" * 20)
    with pytest.raises(InputImageError, match=r"notes\.tif: not a readable image.*Supported"):
        probe(tmp_path / "notes.tif", LIMIT)


def test_header_above_pixel_limit_is_refused_before_decoding(tmp_path):
    tifffile.imwrite(tmp_path / "huge.tif", textured(100, 100))
    with pytest.raises(InputImageError, match=r"huge\.tif.*10,000 pixels.*max_source_pixels"):
        probe(tmp_path / "huge.tif", 9_999)


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match=r"nowhere\.tif: file not found.*murals"):
        probe(tmp_path / "nowhere.tif", LIMIT)


def test_header_size_never_raises(tmp_path):
    (tmp_path / "notes.tif").write_text("text")
    assert header_size(tmp_path / "notes.tif", LIMIT) is None
    assert header_size(tmp_path / "missing.tif", LIMIT) is None
    Image.fromarray(textured(10, 12)).save(tmp_path / "ok.png")
    assert header_size(tmp_path / "ok.png", LIMIT) == (12, 10)
