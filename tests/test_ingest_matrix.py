"""The reader is total: every sample format x interpretation x alpha that libvips loads from
TIFF, PNG and JPEG ingests as 8-bit sRGB(A) with the tones of its 8-bit sRGB rendering.

The matrix is generated: one small reference image (gradients and saturated patches) is
converted by libvips into each representation, written to each container that can hold
it, read back through open_as_srgb8 and compared with what it should look like.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import pyvips
import tifffile

from blkassist.errors import InputImageError
from blkassist.probe import open_as_srgb8, probe

LIMIT = 10**7
WIDTH, HEIGHT = 24, 16
FULL = {"uchar": 255, "char": 127, "ushort": 65535, "short": 32767, "uint": 2**32 - 1,
        "int": 2**31 - 1, "float": 1.0}  # fmt: skip


def reference() -> pyvips.Image:
    """Gradients plus saturated patches, 8-bit sRGB (within the CMYK gamut mostly)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([x * 255 // (WIDTH - 1), y * 255 // (HEIGHT - 1), (x + y) * 6 % 256], -1)
    pixels[:4, :4] = (200, 30, 40)
    pixels[-4:, -4:] = (20, 160, 90)
    return pyvips.Image.new_from_array(pixels.astype(np.uint8)).copy(interpretation="srgb")


def alpha8() -> pyvips.Image:
    x = np.tile(np.arange(WIDTH) * 255 // (WIDTH - 1), (HEIGHT, 1)).astype(np.uint8)
    return pyvips.Image.new_from_array(x)


def rescale(image: pyvips.Image, fmt: str) -> pyvips.Image:
    """An 8-bit image stretched over the full scale of `fmt`."""
    if fmt == "uchar":
        return image
    return (image.cast("double") * (FULL[fmt] / 255)).cast(fmt)


def grey(image):
    return image.colourspace("b-w")


def linear(image):
    """8-bit sRGB (or grey) -> linear-light float 0..1 (scRGB)."""
    return image.colourspace("scrgb")


# kind -> (make the representation from the reference, expected 8-bit look, tolerance)
def _kinds():
    ref = reference()
    g = grey(ref)
    bw = (g > 127).ifthenelse(255, 0).cast("uchar").copy(interpretation="b-w")
    cmyk = ref.icc_transform("cmyk")
    cmyk_look = cmyk.icc_transform("srgb", input_profile="cmyk", intent="relative")
    kinds = {
        "bw-1bit": (bw, bw, 0, {"bitdepth": 1}),
        "grey-8": (g, g, 0, {}),
        "grey-16": (g.colourspace("grey16"), g, 1, {}),
        "grey-u32": (rescale(g, "uint"), g, 1, {}),
        "grey-s16": (rescale(g, "short"), g, 1, {}),
        "grey-float": (linear(g)[0], g, 1, {}),
        "rgb-8": (ref, ref, 0, {}),
        "rgb-16": (ref.colourspace("rgb16"), ref, 1, {}),
        "rgb-u32": (rescale(ref, "uint"), ref, 1, {}),
        "rgb-s32": (rescale(ref, "int"), ref, 1, {}),
        "rgb-s16": (rescale(ref, "short"), ref, 1, {}),
        "rgb-s8": (rescale(ref, "char"), ref, 2, {}),
        "scrgb-float": (linear(ref), ref, 1, {}),
        "lab-float": (ref.colourspace("lab"), ref, 1, {}),
        "lab-16": (ref.colourspace("labs"), ref, 1, {}),
        "cmyk-8": (cmyk, cmyk_look, 1, {}),
        "cmyk-16": (rescale(cmyk, "ushort").copy(interpretation="cmyk"), cmyk_look, 1, {}),
        "palette": (ref, None, 0, {"palette": True}),
    }
    return kinds


KINDS = _kinds()
CONTAINERS = {
    ".tif": set(KINDS) - {"palette"},
    ".png": {"bw-1bit", "grey-8", "grey-16", "rgb-8", "rgb-16", "palette"},
    ".jpg": {"grey-8", "rgb-8", "cmyk-8"},
}
CASES = [
    (kind, suffix, with_alpha)
    for suffix, kinds in CONTAINERS.items()
    for kind, with_alpha in itertools.product(sorted(kinds), (False, True))
    if not (with_alpha and (suffix == ".jpg" or kind in ("bw-1bit", "palette")))
]


def with_alpha_band(image: pyvips.Image) -> pyvips.Image:
    fmt = "float" if image.format in ("float", "double") else image.format
    if image.interpretation in ("lab", "labs"):
        fmt = {"lab": "float", "labs": "short"}[image.interpretation]
    alpha = rescale(alpha8(), fmt)
    return image.bandjoin(alpha.cast(image.format))


def expected_look(kind: str, path) -> np.ndarray:
    _, look, _, _ = KINDS[kind]
    if look is None:  # palette: what the file's palette really holds
        look = pyvips.Image.new_from_file(str(path))
    pixels = look.numpy()
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels[..., :3].astype(int)


@pytest.mark.parametrize(("kind", "suffix", "alpha"), CASES, ids=lambda v: str(v))
def test_every_kind_reads_as_srgb8_with_its_tones(tmp_path, kind, suffix, alpha):
    made, _, tolerance, options = KINDS[kind]
    if alpha:
        made = with_alpha_band(made)
    path = tmp_path / f"{kind}{'-alpha' if alpha else ''}{suffix}"
    if suffix == ".jpg":
        options = {**options, "Q": 100, "subsample_mode": "off"}
        tolerance = max(tolerance, 6)
    made.write_to_file(str(path), **options)

    info = probe(path, LIMIT)
    image = open_as_srgb8(path, LIMIT)
    assert (image.format, image.interpretation) == ("uchar", "srgb")
    assert image.bands == (4 if alpha else 3), info
    pixels = image.numpy().astype(int)
    difference = np.abs(pixels[..., :3] - expected_look(kind, path)).max()
    assert difference <= tolerance, f"{info.band_format} {info.interpretation}: {difference}"
    if alpha:
        steps = 2 if kind.endswith("s8") else 1  # signed 8-bit has 128 levels
        assert np.abs(pixels[..., 3] - alpha8().numpy()).max() <= steps


def test_half_float_tiff_is_linear_light(tmp_path):
    ref = reference()
    half = linear(ref).numpy().astype(np.float16)
    tifffile.imwrite(tmp_path / "half.tif", half, photometric="rgb")
    pixels = open_as_srgb8(tmp_path / "half.tif", LIMIT).numpy().astype(int)
    assert np.abs(pixels - ref.numpy()).max() <= 2  # half precision near white: ~1 step


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, suffix, orientation):
    ref = reference()
    tagged = ref.copy()
    tagged.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    path = tmp_path / f"o{orientation}{suffix}"
    tagged.write_to_file(
        str(path), **({"Q": 100, "subsample_mode": "off"} if suffix == ".jpg" else {})
    )
    upright = pyvips.Image.new_from_file(str(path)).autorot().numpy().astype(int)
    pixels = open_as_srgb8(path, LIMIT).numpy().astype(int)
    assert pixels.shape == upright.shape
    assert np.abs(pixels - upright).max() <= (0 if suffix == ".tif" else 1)
    info = probe(path, LIMIT)
    assert (info.width, info.height) == (pixels.shape[1], pixels.shape[0])  # as ingested
    if orientation in (5, 6, 7, 8):
        assert pixels.shape[:2] == (WIDTH, HEIGHT)


def test_multi_page_tiff_uses_its_first_page_and_says_so(tmp_path):
    ref = reference()
    other = ref.invert()
    pages = pyvips.Image.arrayjoin([ref, other, other], across=1).copy()
    pages.set_type(pyvips.GValue.gint_type, "page-height", HEIGHT)
    pages.write_to_file(str(tmp_path / "pages.tif"))
    info = probe(tmp_path / "pages.tif", LIMIT)
    assert (info.pages, info.width, info.height) == (3, WIDTH, HEIGHT)
    pixels = open_as_srgb8(tmp_path / "pages.tif", LIMIT).numpy()
    assert np.array_equal(pixels, ref.numpy())


@pytest.mark.parametrize(
    ("name", "data", "options", "problem"),
    [
        ("lab8.tif", np.zeros((8, 8, 3), np.uint8), {"photometric": "cielab"}, "8-bit CIELAB"),
        ("double.tif", np.zeros((8, 8, 3)), {"photometric": "rgb"}, "64-bit float"),
        ("complex.tif", np.zeros((8, 8), np.complex64), {}, "complex"),
    ],
)
def test_what_libvips_cannot_decode_is_refused_by_name_with_a_fix(
    tmp_path, name, data, options, problem
):
    tifffile.imwrite(tmp_path / name, data, **options)
    with pytest.raises(InputImageError, match=rf"{name}: {problem}.*Re-export") as error:
        probe(tmp_path / name, LIMIT)
    assert str(tmp_path / name) in str(error.value)
