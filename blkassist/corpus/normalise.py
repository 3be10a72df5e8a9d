"""Normalise a collection's scans to 8-bit sRGB PNGs with a manifest row per image.

Images are named by content hash, so a rerun reuses what it already normalised and a
duplicate scan (same bytes) is reported and used once.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyvips

from blkassist.corpus.collections import list_scans, taxonomy
from blkassist.errors import InputImageError
from blkassist.fsutil import atomic_path, write_json
from blkassist.probe import damaged, open_as_srgb8, probe

log = logging.getLogger(__name__)

ID_LENGTH = 16


@dataclass(frozen=True)
class ManifestRow:
    id: str
    collection: str
    source: str
    sha256: str
    width: int
    height: int
    taxonomy: str  # nested folder names joined by "/"
    image: str  # the normalised PNG


def write_manifest(path: str | os.PathLike, rows: list[ManifestRow]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [f.name for f in fields(ManifestRow)], delimiter="\t")
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    with open(path, newline="") as handle:
        return [
            ManifestRow(**{**row, "width": int(row["width"]), "height": int(row["height"])})
            for row in csv.DictReader(handle, delimiter="\t")
        ]


def distinct_rows(manifests) -> list[ManifestRow]:
    """Rows of several manifests, each distinct scan (by content) once: a scan kept in two
    collections is used once."""
    seen: set[str] = set()
    rows = []
    for manifest in manifests:
        for row in read_manifest(manifest):
            if row.sha256 not in seen:
                seen.add(row.sha256)
                rows.append(row)
    return rows


def clear_transparent(image: pyvips.Image) -> pyvips.Image:
    """RGBA with colour 0 wherever alpha is 0 (stray colour there is invisible noise)."""
    return (image[3] == 0).ifthenelse([0, 0, 0, 0], image)


def normalise_collection(
    name: str,
    folder: str | os.PathLike,
    images_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    report: str | os.PathLike,
    max_pixels: int,
    alpha: str = "passthrough",
) -> list[ManifestRow]:
    """Normalise every scan of a collection; fail at the end, naming each bad file.

    Good scans are normalised even when others are bad, so fixing one file and rerunning
    redoes only that file. alpha="keep" is for collections of transparent RGBA assets: an
    image without alpha is refused, and colour under fully transparent pixels is cleared.
    """
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    duplicates: list[dict] = []
    problems: list[str] = []
    seen: dict[str, ManifestRow] = {}
    for scan in list_scans(folder):
        try:
            info = probe(scan, max_pixels, decode=False)  # writing the PNG decodes it
        except InputImageError as error:
            problems.append(str(error))
            continue
        image_id = info.sha256[:ID_LENGTH]
        if image_id in seen:
            duplicates.append({"source": str(scan), "same_as": seen[image_id].source})
            log.warning("%s duplicates %s; using it once", scan, seen[image_id].source)
            continue
        image = open_as_srgb8(scan, max_pixels)
        if alpha == "keep":
            if not image.hasalpha():
                problems.append(
                    f"{scan}: no alpha channel, but collection {name!r} holds transparent "
                    "assets (alpha: keep). Export it as RGBA PNG/TIFF with transparency, or "
                    "move it to a scan collection."
                )
                continue
            image = clear_transparent(image)
        suffix = "-rgba" if alpha == "keep" else ""  # the two modes write different pixels
        target = images_dir / f"{image_id}{suffix}.png"
        if not target.exists():  # named by content hash: an existing one is this scan
            try:
                with atomic_path(target) as tmp:
                    image.pngsave(str(tmp), compression=3, keep="none")
            except pyvips.Error as error:
                problems.append(str(damaged(scan, error)))
                continue
        row = ManifestRow(
            id=image_id,
            collection=name,
            source=str(scan),
            sha256=info.sha256,
            width=image.width,
            height=image.height,
            taxonomy="/".join(taxonomy(scan, folder)),
            image=str(target),
        )
        seen[image_id] = row
        rows.append(row)
    write_json(
        report,
        {"collection": name, "images": len(rows), "duplicates": duplicates, "problems": problems},
    )
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise InputImageError(
            f"collection {name!r}: {len(problems)} scan(s) cannot be used (the other "
            f"{len(rows)} are normalised and kept):\n{listing}"
        )
    write_manifest(manifest, rows)
    log.info("%s: %d images, %d duplicate(s) used once", name, len(rows), len(duplicates))
    return rows
