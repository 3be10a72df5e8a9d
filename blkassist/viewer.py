"""Review outputs of a mural: Deep Zoom pyramids, a static side-by-side viewer, a thumbnail
and a provenance page.

The viewer is one HTML file beside its pyramids and a copy of OpenSeadragon (installed from
the npm registry by `make viewer-deps`): it opens from disk or from any static web server,
with nothing fetched from elsewhere. Each pyramid's descriptor is written into the page
itself, so no XHR is needed and browsers that block file:// requests still show it.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyvips

from blkassist.errors import BlkAssistError
from blkassist.fsutil import atomic_path, read_json

log = logging.getLogger(__name__)

DZI_NS = "{http://schemas.microsoft.com/deepzoom/2008}"


@contextmanager
def _open_image(path: str | os.PathLike, overlays=None) -> Iterator[pyvips.Image]:
    """An image file, or a pass's canvas named by its allocation record (.json) with any
    re-rolled pieces laid over it, streamed for as long as the context lasts."""
    if str(path).endswith(".json"):
        from blkassist import canvas
        from blkassist.assemble import CanvasStream

        view = canvas.open_view({"canvas": str(path), "overlays": overlays})
        with CanvasStream(view) as stream:
            yield stream.image
    else:
        yield pyvips.Image.new_from_file(str(path), access="sequential")


def _display_image(image: pyvips.Image) -> pyvips.Image:
    """The image as 8-bit sRGB without alpha (flattened on white)."""
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.bands == 1:
        image = image.colourspace("srgb")
    return image.cast("uchar")


def deep_zoom(
    image: str | os.PathLike,
    dzi: str | os.PathLike,
    tiles: str | os.PathLike,
    tile_size: int,
    overlap: int,
    quality: int,
    overlays=None,
) -> dict:
    """Write a Deep Zoom pyramid (`dzi` descriptor + `tiles` folder) of `image`, streaming
    (`overlays`: a canvas's re-rolled pieces, canvas.open_view).

    Both land under their final names only when the whole pyramid is written.
    """
    started = time.perf_counter()
    dzi, tiles = Path(dzi), Path(tiles)
    if tiles.name != dzi.stem + "_files":
        raise ValueError(f"Deep Zoom tiles must sit in {dzi.stem}_files beside {dzi}")
    dzi.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dzi.stem}.", dir=dzi.parent))
    try:
        with _open_image(image, overlays) as decoded:
            _display_image(decoded).dzsave(
                str(tmp / dzi.stem),
                tile_size=tile_size,
                overlap=overlap,
                suffix=f".jpg[Q={quality}]",
                layout="dz",
            )
        if tiles.exists():
            shutil.rmtree(tiles)
        os.replace(tmp / tiles.name, tiles)
        os.replace(tmp / dzi.name, dzi)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = read_dzi(dzi)
    log.info(
        "read %s (%dx%d); wrote %s and %s (tiles %d+%d, JPEG Q%d) in %.1f s",
        image, info["width"], info["height"], dzi, tiles, tile_size, overlap, quality,
        time.perf_counter() - started,
    )  # fmt: skip
    return info


def read_dzi(path: str | os.PathLike) -> dict:
    root = ET.parse(path).getroot()
    size = root.find(f"{DZI_NS}Size")
    return {
        "width": int(size.get("Width")),
        "height": int(size.get("Height")),
        "tile_size": int(root.get("TileSize")),
        "overlap": int(root.get("Overlap")),
        "format": root.get("Format"),
    }


def _tile_source(dzi: Path, page_dir: Path) -> dict:
    """An OpenSeadragon DZI tile source given inline (URL relative to the page)."""
    info = read_dzi(dzi)
    return {
        "Image": {
            "xmlns": "http://schemas.microsoft.com/deepzoom/2008",
            "Url": os.path.relpath(dzi.with_name(dzi.stem + "_files"), page_dir) + "/",
            "Format": info["format"],
            "Overlap": str(info["overlap"]),
            "TileSize": str(info["tile_size"]),
            "Size": {"Width": str(info["width"]), "Height": str(info["height"])},
        }
    }


def window_grid(geometry: dict) -> dict:
    """What the page needs to name a refinement pass's windows under the cursor: its
    canvas size, window origins and size, and the seams that bound the windows' cells."""
    from blkassist.refine.plan import RefinePass

    plan = RefinePass(**geometry, tiles_per_job=1, blocks_per_job=1)
    return {
        "pass": plan.name,
        "width": plan.width,
        "height": plan.height,
        "xs": list(plan.xs),
        "ys": list(plan.ys),
        "window": [plan.window_width, plan.window_height],
        "seamsX": list(plan.seams_x),
        "seamsY": list(plan.seams_y),
    }


def worst_windows(seams: str | os.PathLike, count: int = 12) -> list[dict]:
    """The windows with the worst seams over every pass of a seam report, worst first."""
    found = []
    for entry in read_json(seams)["passes"]:
        found += entry.get("worst_windows", [])

    def badness(window):
        return max(window.get("level", 1) - 1, (1 - window.get("texture", 1)) * 5)

    return sorted(found, key=lambda w: -badness(w))[:count]


def write_viewer(
    page: str | os.PathLike,
    template: str | os.PathLike,
    title: str,
    panels: list[dict],
    overlays: list[dict],
    openseadragon_build: str | os.PathLike,
    openseadragon_copy: str | os.PathLike,
    before: dict | None = None,
    seams: str | os.PathLike | None = None,
    mural: str = "",
    grids: list[dict] = (),
) -> None:
    """Write the viewer page: one synchronised panel per entry of `panels` ({name, label,
    dzi, grid: a refinement pass's geometry, for picking its windows}), and `overlays`
    ({name, label, dzi, on}) drawn over the last panel with a toggle. `before` ({dzi,
    regions}): the last pass before its re-roll, shown in the re-rolled regions by a
    toggle; `seams`: the mural's seam report, whose worst windows the page links to;
    `grids`: every refinement pass's geometry (where those windows are).
    """
    page, build = Path(page), Path(openseadragon_build)
    script = build / "openseadragon.min.js"
    if not script.is_file():
        raise BlkAssistError(
            f"OpenSeadragon is not installed ({script} is missing): run `make viewer-deps` "
            "(npm ci in viewer/) on this machine."
        )
    copy = Path(openseadragon_copy)
    with atomic_path(copy) as tmp:
        tmp.mkdir()
        shutil.copy2(script, tmp / script.name)
        shutil.copytree(build / "images", tmp / "images")
        if copy.exists():
            shutil.rmtree(copy)

    def entry(layer: dict) -> dict:
        source = _tile_source(Path(layer["dzi"]), page.parent)
        shown = {"name": layer["name"], "label": layer["label"], "source": source}
        if layer.get("grid"):
            shown["grid"] = window_grid(layer["grid"])
        return shown

    layout = {
        "title": title,
        "mural": mural,
        "prefixUrl": os.path.relpath(copy / "images", page.parent) + "/",
        "panels": [entry(p) for p in panels],
        "overlays": [{**entry(o), "on": bool(o.get("on", True))} for o in overlays],
        "before": {**entry(before), "regions": before["regions"]} if before else None,
        "worst": worst_windows(seams) if seams else [],
        "grids": {grid["pass"]: grid for grid in map(window_grid, grids)},
    }
    # </ cannot end the script element early: JSON escapes the slash.
    payload = json.dumps(layout, indent=1).replace("</", "<\\/")
    text = (
        Path(template)
        .read_text()
        .replace("__TITLE__", html.escape(title))
        .replace("__OPENSEADRAGON__", os.path.relpath(copy / script.name, page.parent))
        .replace("__LAYOUT__", payload)
    )
    with atomic_path(page) as tmp:
        tmp.write_text(text)
    log.info(
        "wrote %s: panels %s, overlays %s, %d worst windows linked, %s",
        page, [p["name"] for p in panels], [o["name"] for o in overlays], len(layout["worst"]),
        f"before/after over {len(before['regions'])} re-rolled region(s)" if before
        else "no re-roll",
    )  # fmt: skip


def mural_summary(
    image: str | os.PathLike,
    provenance: str | os.PathLike,
    thumbnail: str | os.PathLike,
    page: str | os.PathLike,
    long_side: int,
) -> None:
    """A thumbnail of the mural and a one-page, readable account of its provenance."""
    started = time.perf_counter()
    full = pyvips.Image.new_from_file(str(image))
    small = pyvips.Image.thumbnail(str(image), long_side, height=long_side, size="down")
    if small.hasalpha():
        small = small.flatten(background=[255] * (small.bands - 1))
    with atomic_path(thumbnail) as tmp:
        small.cast("uchar").pngsave(str(tmp), compression=6, keep="none")
    record = read_json(provenance)
    rows = "\n".join(
        f"<tr><th>{html.escape(key)}</th><td><code>{html.escape(value)}</code></td></tr>"
        for key, value in _flatten(record)
    )
    with atomic_path(page) as tmp:
        tmp.write_text(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Provenance of {html.escape(Path(image).name)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
            "th{background:#f4f4f4;font-weight:normal;white-space:nowrap}</style></head><body>"
            f"<h1>{html.escape(Path(image).name)}</h1>"
            f"<p>{full.width} × {full.height} pixels ({full.width * full.height / 1e6:.1f} Mpx)."
            f" Recorded in <code>{html.escape(Path(provenance).name)}</code>.</p>"
            f"<table>\n{rows}\n</table></body></html>\n"
        )
    log.info(
        "read %s (%dx%d) and %s; wrote %s (%dx%d) and %s in %.1f s",
        image, full.width, full.height, provenance, thumbnail, small.width, small.height,
        page, time.perf_counter() - started,
    )  # fmt: skip


def _flatten(record, prefix: str = ""):
    """(dotted key, text) pairs of a nested JSON record, in its order."""
    if isinstance(record, dict):
        for key, value in record.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(record, list) and any(isinstance(v, (dict, list)) for v in record):
        for index, value in enumerate(record):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        text = record if isinstance(record, str) else json.dumps(record)
        yield prefix.rstrip("."), text
