"""Collections of raw scans declared in config, each with an ownership/consent record."""

from __future__ import annotations

import os
from pathlib import Path

from blkassist.errors import ConfigError

SCAN_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
MASK_TAG = ".mask"  # scan.png may have an artist mask scan.mask.png beside it


def require_consent(name: str, collection: dict) -> None:
    """Refuse a collection the artist has not cleared for training."""
    if collection.get("consent") is not True:
        raise ConfigError(
            f"corpus.collections.{name}.consent is false: collection {name!r} "
            f"({collection.get('path')}) is refused. BLK-Assist trains only on work the artist "
            "owns and agrees to train on; set consent: true once the artist "
            f"({collection.get('artist', 'unknown')}) has agreed, or remove the collection."
        )


def list_scans(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (nested folders included, hidden ones skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: collection folder not found; fix corpus.collections.NAME.path"
        )
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / f
            for f in files
            if not f.startswith(".")
            and Path(f).suffix.lower() in SCAN_SUFFIXES
            and not Path(f).stem.endswith(MASK_TAG)
        )
    return sorted(found)


def taxonomy(scan: Path, folder: str | os.PathLike) -> list[str]:
    """The nested folder names between the collection root and the scan."""
    return list(scan.relative_to(folder).parent.parts)


def mask_for(scan: str | os.PathLike) -> Path | None:
    """The artist's mask beside a scan (grayscale, white = train here), if there is one."""
    scan = Path(scan)
    for suffix in (".png", ".tif", ".tiff", ".jpg"):
        candidate = scan.with_name(f"{scan.stem}{MASK_TAG}{suffix}")
        if candidate.exists():
            return candidate
    return None
