"""Provenance sidecars: what went into a result, enough to reproduce it."""

from __future__ import annotations

import importlib.metadata
import platform

import pyvips

from blkassist.probe import sha256_file

_PACKAGES = ("blkassist", "torch", "basicsr", "pyvips", "tifffile", "zarr", "numpy", "pillow")


def versions(packages=_PACKAGES) -> dict[str, str]:
    found = {"python": platform.python_version(), "libvips": _libvips()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _libvips() -> str:
    return ".".join(str(pyvips.version(part)) for part in range(3))


def file_record(path) -> dict:
    return {"path": str(path), "sha256": sha256_file(path)}
