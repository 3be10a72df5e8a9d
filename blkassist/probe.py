"""Probe and open source images: header checks, decode checks, conversion to 8-bit sRGB.

Everything streams through libvips; no function here holds a whole image in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pyvips
import tifffile

from blkassist.errors import InputImageError

SUPPORTED = "TIFF/BigTIFF, PNG or JPEG"


@dataclass(frozen=True)
class SourceInfo:
    path: str
    loader: str
    width: int
    height: int
    bands: int
    band_format: str
    interpretation: str
    has_alpha: bool
    has_icc: bool
    xres: float  # pixels per millimetre, as libvips reports it
    yres: float
    orientation: int
    pages: int  # a multi-page TIFF's first page is the source
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def _fail(path, problem: str, fix: str) -> InputImageError:
    return InputImageError(f"{path}: {problem}. {fix}")


def read_header(path: str | os.PathLike, max_pixels: int) -> pyvips.Image:
    """Open `path` lazily (header only) and check it against `max_pixels`."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file not found", "Check the path in your config (murals.NAME.source).")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty (0 bytes)", "Re-export or re-copy the image.")
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
    except pyvips.Error as error:
        check_supported(path)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unknown"
        raise _fail(
            path,
            f"not a readable image ({first_line})",
            f"Supported: {SUPPORTED}. Re-export it from your editor.",
        ) from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise _fail(
            path,
            f"header claims {image.width}x{image.height} = {pixels:,} pixels, above the limit "
            f"of {max_pixels:,}",
            "If the image is genuine, raise limits.max_source_pixels in your config.",
        )
    return image


def _field(image: pyvips.Image, name: str, default):
    return image.get(name) if image.get_typeof(name) else default


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def damaged(path, error: pyvips.Error) -> InputImageError:
    """The error for a file whose header reads but whose pixels do not decode."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[-1] if lines else "decode error"  # libvips puts the cause last
    return _fail(
        path,
        f"image data is damaged or truncated ({detail})",
        "Re-export or re-copy the file; the header is fine but the pixels are not.",
    )


def probe(path: str | os.PathLike, max_pixels: int, decode: bool = True) -> SourceInfo:
    """Check that `path` is a usable source: header, pixel limit, and a full decode.

    The full decode streams once through the image (min() touches every pixel) so that a
    truncated file fails here, before any expensive work, and not halfway through ingest.
    A caller that decodes the whole image next anyway passes decode=False and reports a
    failure with damaged().
    """
    image = read_header(path, max_pixels)
    if _field(image, "vips-loader", "").startswith("tiff"):
        _check_tiff_extent(Path(path))
        check_supported(path)
    if decode:
        try:
            image.min()
        except pyvips.Error as error:
            raise damaged(path, error) from None
    orientation = int(_field(image, "orientation", 1))
    turned = orientation in (5, 6, 7, 8)  # ingest rotates by 90 degrees: the canvas's size
    return SourceInfo(
        path=str(path),
        loader=_field(image, "vips-loader", "unknown"),
        width=image.height if turned else image.width,
        height=image.width if turned else image.height,
        bands=image.bands,
        band_format=image.format,
        interpretation=image.interpretation,
        has_alpha=bool(image.hasalpha()),
        has_icc=bool(image.get_typeof("icc-profile-data")),
        xres=image.xres,
        yres=image.yres,
        orientation=orientation,
        pages=int(_field(image, "n-pages", 1)),
        size_bytes=Path(path).stat().st_size,
        sha256=sha256_file(path),
    )


def _check_tiff_extent(path: Path) -> None:
    """libtiff quietly reads a strip cut short by truncation as zeros; check the offsets."""
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
    if ends and max(ends) > size:
        raise _fail(
            path,
            f"image data is damaged or truncated (needs {max(ends):,} bytes, file has {size:,})",
            "Re-export or re-copy the file; the header is fine but the pixels are not.",
        )


def open_as_srgb8(path: str | os.PathLike, max_pixels: int) -> pyvips.Image:
    """A lazy view of the source (its first page) as 8-bit sRGB: 3 bands, or 4 with alpha.

    Total over what libvips loads from TIFF, PNG and JPEG: every sample format (1-bit to
    32-bit integer, signed or not, half and single float) in every interpretation (B/W,
    grey, RGB, CMYK, CIELAB, scRGB, palette), with or without alpha, upright by its EXIF
    orientation. Embedded ICC profiles are honoured; CMYK without one uses libvips'
    built-in CMYK profile; float RGB and float grey are linear light (scRGB), as TIFF float
    data is by convention; Lab is converted colorimetrically.
    """
    image = read_header(path, max_pixels)
    if _field(image, "orientation", 1) != 1:
        # Rotating needs random access; reopen that way (libvips caches what it needs).
        image = pyvips.Image.new_from_file(str(path), fail_on="truncated").autorot()
    return to_srgb8(image)


# Full scale of each integer sample format (negative values of signed ones are clipped).
_FULL_SCALE = {
    "uchar": 255,
    "char": 127,
    "ushort": 65535,
    "short": 32767,
    "uint": 2**32 - 1,
    "int": 2**31 - 1,
    "float": 1.0,
    "double": 1.0,
}
_LAB = {"lab", "labs", "labq", "lch", "cmc", "xyz", "yxy"}
_PROFILED = {"srgb", "rgb16", "b-w", "grey16", "cmyk"}


def to_srgb8(image: pyvips.Image) -> pyvips.Image:
    """Convert a decoded image of any libvips format and interpretation to 8-bit sRGB(A)."""
    if image.coding == "labq":
        image = image.LabQ2Lab()
    alpha = None
    if image.hasalpha():
        alpha = _scaled(image[image.bands - 1], "uchar")
        image = image[: image.bands - 1]
    interpretation = image.interpretation
    if (interpretation == "cmyk" and image.bands != 4) or image.bands == 2:
        interpretation = "multiband"  # not what it says: fall back to its first band(s)
    if image.format in ("float", "double") and interpretation not in _LAB:
        # TIFF float samples are linear light, 0..1: scRGB (grey as three equal bands).
        image = (image if image.bands >= 3 else image[0].bandjoin([image[0], image[0]]))[:3]
        image = image.cast("float").copy(interpretation="scrgb")
    elif interpretation not in _LAB | {"cmyk", "scrgb"}:
        wide = image.format not in ("uchar",)
        if image.format not in ("uchar", "ushort"):
            image = _scaled(image, "ushort")
        image = image[0] if image.bands < 3 else image[:3]
        tag = ("rgb16" if wide else "srgb") if image.bands == 3 else ("grey16" if wide else "b-w")
        image = image.copy(interpretation=tag)
        if interpretation not in _PROFILED:
            image.remove("icc-profile-data")  # a profile for an unknown space cannot apply
    if image.get_typeof("icc-profile-data") and image.interpretation in _PROFILED:
        image = image.icc_transform(
            "srgb", embedded=True, input_profile="srgb", intent="relative", depth=8
        )
    elif image.interpretation == "cmyk":
        image = image.icc_transform("srgb", input_profile="cmyk", intent="relative", depth=8)
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = _scaled(image, "uchar")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    if alpha is not None:
        image = image.bandjoin(alpha)
    return image.copy(interpretation="srgb")


def _scaled(image: pyvips.Image, target: str) -> pyvips.Image:
    """Map the full scale of `image`'s sample format onto `target` (uchar or ushort)."""
    if image.format == target:
        return image
    factor = _FULL_SCALE[target] / _FULL_SCALE[image.format]
    return (image.cast("double") * factor).rint().cast(target)  # cast clips to the range


def check_supported(path) -> None:
    """Refuse, by name and with a fix, the TIFF kinds libvips cannot decode."""
    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            bits, sample, photometric = page.bitspersample, page.sampleformat, page.photometric
    except Exception:  # not a TIFF, or one tifffile cannot parse: libvips has the say
        return
    if photometric in (8, 9) and bits == 8:  # CIELAB / ICCLab, 8-bit
        raise _fail(
            path,
            "8-bit CIELAB TIFF, which libvips cannot decode",
            "Re-export it as 16-bit Lab, or as RGB (8 or 16 bit) with its ICC profile.",
        )
    if (sample == 3 and bits == 64) or sample in (5, 6):
        kind = "complex" if sample in (5, 6) else "64-bit float"
        raise _fail(
            path,
            f"{kind} samples, which libvips cannot decode",
            "Re-export it as 32-bit float, 16-bit integer or 8-bit.",
        )


def header_alpha(path: str | os.PathLike) -> bool:
    """Whether the source has an alpha band, from its header (False when unreadable)."""
    try:
        return bool(pyvips.Image.new_from_file(str(path), access="sequential").hasalpha())
    except pyvips.Error:
        return False


def header_size(path: str | os.PathLike, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the file is missing or unusable.

    Used while the DAG is built: a bad source must not stop the other murals' planning, so
    problems are left for the mural's probe job to report with the full message.
    """
    try:
        image = read_header(path, max_pixels)
    except InputImageError:
        return None
    if _field(image, "orientation", 1) in (5, 6, 7, 8):  # rotated by 90 degrees on ingest
        return image.height, image.width
    return image.width, image.height
