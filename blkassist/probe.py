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
_SIXTEEN_BIT = {"rgb16", "grey16"}


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
    if decode:
        try:
            image.min()
        except pyvips.Error as error:
            raise damaged(path, error) from None
    return SourceInfo(
        path=str(path),
        loader=_field(image, "vips-loader", "unknown"),
        width=image.width,
        height=image.height,
        bands=image.bands,
        band_format=image.format,
        interpretation=image.interpretation,
        has_alpha=bool(image.hasalpha()),
        has_icc=bool(image.get_typeof("icc-profile-data")),
        xres=image.xres,
        yres=image.yres,
        orientation=int(_field(image, "orientation", 1)),
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
    """A lazy view of the source as 8-bit sRGB (3 bands, or 4 with alpha).

    ICC profiles are honoured (CMYK without one uses libvips' built-in CMYK profile);
    16-bit and grey images are converted; palette images arrive as RGB(A) from the loader.
    """
    image = read_header(path, max_pixels)
    if _field(image, "orientation", 1) != 1:
        # Rotating needs random access; reopen that way (libvips caches what it needs).
        image = pyvips.Image.new_from_file(str(path), fail_on="truncated").autorot()
    alpha = None
    if image.hasalpha():
        alpha = image[image.bands - 1]
        image = image[: image.bands - 1]
    if image.get_typeof("icc-profile-data") or image.interpretation == "cmyk":
        image = image.icc_transform(
            "srgb",
            embedded=True,
            input_profile="cmyk" if image.interpretation == "cmyk" else "srgb",
            intent="relative",
            depth=8,
        )
    elif image.interpretation in _SIXTEEN_BIT or image.bands < 3:
        image = image.colourspace("srgb")  # also scales 16-bit to 8-bit
    if image.format != "uchar":
        image = _to_uchar(image)
    if image.bands == 1:
        image = image.bandjoin([image, image])
    if alpha is not None:
        image = image.bandjoin(alpha if alpha.format == "uchar" else _to_uchar(alpha))
    return image.copy(interpretation="srgb")


def _max_value(format_name: str) -> float:
    return {"uchar": 255, "char": 127, "ushort": 65535, "short": 32767}.get(format_name, 1.0)


def _to_uchar(image: pyvips.Image) -> pyvips.Image:
    peak = _max_value(image.format)
    return (image * (255.0 / peak)).round().cast("uchar")


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
