"""Layered compositions: a background and RGBA assets placed by Z-role, written as an
OpenRaster file (Krita, GIMP), a layered PSD (Photoshop; via psd-tools) and a flattened PNG.

Every layer is a full-canvas straight-alpha RGBA image plus an opacity. Scaling happens on
premultiplied colour and the flattening is a premultiplied "over", so the colour under clear
pixels never leaks into an edge (no dark or light fringes).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageOps

from blkassist.errors import ConfigError, InputImageError
from blkassist.fsutil import atomic_path, read_json, write_json
from blkassist.probe import sha256_file

log = logging.getLogger(__name__)

ROLE_ORDER = ("BG-overlay", "MG", "FG")  # bottom to top, all above the background
ORA_MIMETYPE = b"image/openraster"


@dataclass
class Layer:
    name: str
    role: str
    image: Image.Image  # RGBA, canvas size, straight alpha
    opacity: float = 1.0
    source: str = ""


def _open_rgba(path: str | os.PathLike, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: {what} not found.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGBA")
    except OSError as error:
        raise InputImageError(f"{path}: {what} is not a readable image ({error}).") from None


def scale_premultiplied(image: Image.Image, scale: float) -> Image.Image:
    """Resize an RGBA image by `scale`: premultiplied colour in float, a filter without
    negative lobes (a Lanczos overshoot clipped in one channel tints edges), then back to
    straight 8-bit colour."""
    if scale == 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    rgba = np.asarray(image, np.float32) / 255
    alpha = rgba[..., 3:]
    planes = np.concatenate([rgba[..., :3] * alpha, alpha], axis=2)
    resized = np.stack(
        [
            np.asarray(Image.fromarray(planes[..., c], "F").resize(size, Image.Resampling.BILINEAR))
            for c in range(4)
        ],
        axis=2,
    ).clip(0, 1)
    alpha = resized[..., 3:]
    colour = np.where(alpha > 0, resized[..., :3] / np.maximum(alpha, 1e-12), 0).clip(0, 1)
    straight = np.concatenate([colour, alpha], axis=2)
    return Image.fromarray(np.round(straight * 255).astype(np.uint8), "RGBA")


def place(asset: Image.Image, canvas: tuple[int, int], x: float, y: float, scale: float):
    """The asset scaled and centred at (x, y) (fractions of the canvas), on a clear canvas;
    parts outside the canvas are cut off."""
    scaled = scale_premultiplied(asset, scale)
    left = round(x * canvas[0] - scaled.width / 2)
    top = round(y * canvas[1] - scaled.height / 2)
    layer = Image.new("RGBA", canvas, (0, 0, 0, 0))
    layer.paste(scaled, (left, top))
    return layer


def flatten(layers: list[Layer]) -> np.ndarray:
    """Premultiplied "over" of the layers, bottom first: (H, W, 4) straight RGBA floats."""
    height, width = layers[0].image.height, layers[0].image.width
    colour = np.zeros((height, width, 3), np.float64)
    coverage = np.zeros((height, width, 1), np.float64)
    for layer in layers:
        rgba = np.asarray(layer.image, np.float64) / 255
        alpha = rgba[..., 3:] * layer.opacity
        colour = rgba[..., :3] * alpha + colour * (1 - alpha)
        coverage = alpha + coverage * (1 - alpha)
    straight = np.where(coverage > 0, colour / np.maximum(coverage, 1e-12), 0)
    return np.concatenate([straight, coverage], axis=2)


def to_image(rgba: np.ndarray) -> Image.Image:
    """8-bit image: RGB when fully opaque, else RGBA."""
    array = np.clip(np.round(rgba * 255), 0, 255).astype(np.uint8)
    if (array[..., 3] == 255).all():
        return Image.fromarray(array[..., :3], "RGB")
    return Image.fromarray(array, "RGBA")


# -- building the layer stack ---------------------------------------------------------
def resolve_asset(element: dict, index: int, where: str) -> str:
    """The PNG behind an element: an `image` path, or (set, prompt, seed) in a set's index."""
    if "image" in element:
        return element["image"]
    records = read_json(element["index"])
    chosen = [
        r for r in records
        if r["image"].startswith(f"{element['prompt']:02d}-") and r["seed"] == element["seed"]
    ]  # fmt: skip
    if not chosen:
        available = sorted({(int(r["image"][:2]), r["seed"]) for r in records})
        raise ConfigError(
            f"{where}.elements.{index}: no asset with prompt {element['prompt']} and seed "
            f"{element['seed']} in {element['index']}; available (prompt, seed): {available}"
        )
    return str(Path(element["index"]).parent / chosen[0]["image"])


def build_layers(
    background: str, elements: list[dict], size: tuple[int, int] | None, where: str
) -> list[Layer]:
    """Background first, then elements by Z-role (BG-overlay, MG, FG), config order within
    a role. Layer names are the role (and the element's name), numbered when repeated."""
    base = _open_rgba(background, f"{where}.background")
    if size:
        base = ImageOps.fit(base, tuple(size), Image.Resampling.LANCZOS)
    canvas = base.size
    layers = [Layer("background", "background", base, 1.0, str(background))]
    ordered = sorted(enumerate(elements), key=lambda pair: ROLE_ORDER.index(pair[1]["role"]))
    seen: dict[str, int] = {}
    for index, element in ordered:
        path = resolve_asset(element, index, where)
        asset = _open_rgba(path, f"{where}.elements.{index} asset")
        label = f"{element['role']} {element['name']}" if element.get("name") else element["role"]
        seen[label] = seen.get(label, 0) + 1
        name = label if seen[label] == 1 else f"{label} {seen[label]}"
        image = place(asset, canvas, element["x"], element["y"], element["scale"])
        layers.append(Layer(name, element["role"], image, element["opacity"], str(path)))
    return layers


# -- writers --------------------------------------------------------------------------
def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_ora(layers: list[Layer], merged: Image.Image, path: str | os.PathLike) -> None:
    """OpenRaster: `mimetype` first and stored, stack.xml listing layers top first, one PNG
    per layer, the merged image and a thumbnail."""
    width, height = merged.size
    root = ElementTree.Element("image", version="0.0.5", w=str(width), h=str(height))
    stack = ElementTree.SubElement(root, "stack")
    files = {}
    for number, layer in reversed(list(enumerate(layers))):
        src = f"data/layer{number:03d}.png"
        ElementTree.SubElement(
            stack,
            "layer",
            name=layer.name,
            src=src,
            x="0",
            y="0",
            opacity=f"{layer.opacity:.4f}",
            visibility="visible",
            **{"composite-op": "svg:src-over"},
        )
        files[src] = _png_bytes(layer.image)
    thumbnail = merged.copy()
    thumbnail.thumbnail((256, 256), Image.Resampling.LANCZOS)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), ORA_MIMETYPE, zipfile.ZIP_STORED)
        xml = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
        archive.writestr("stack.xml", xml, zipfile.ZIP_DEFLATED)
        for src, data in files.items():
            archive.writestr(src, data, zipfile.ZIP_STORED)  # PNG is compressed already
        archive.writestr("mergedimage.png", _png_bytes(merged), zipfile.ZIP_STORED)
        archive.writestr("Thumbnails/thumbnail.png", _png_bytes(thumbnail), zipfile.ZIP_STORED)


def write_psd(layers: list[Layer], path: str | os.PathLike) -> None:
    """A layered PSD: one pixel layer per element (bottom first), opacity as layer opacity,
    alpha as the layer's transparency; the merged preview is rendered by psd-tools."""
    from psd_tools import PSDImage

    width, height = layers[0].image.size
    document = PSDImage.new("RGBA", (width, height), color=(0, 0, 0, 0))
    for layer in layers:
        document.create_pixel_layer(
            layer.image, name=layer.name, top=0, left=0, opacity=round(layer.opacity * 255)
        )
    with atomic_path(path) as tmp:
        document.save(tmp)


def layer_licences(layers: list[Layer]) -> list[dict]:
    """The licences recorded in the provenance sidecars (NAME.json) beside the layers'
    images (generated assets, concept picks), each model once."""
    found = {}
    for layer in layers:
        sidecar = Path(layer.source).with_suffix(".json")
        if sidecar.is_file():
            for entry in read_json(sidecar).get("licences") or []:
                found.setdefault((entry["model"], entry["licence"]), entry)
    return list(found.values())


def compose(
    name: str,
    background: str,
    elements: list[dict],
    outputs: dict[str, str],
    size: tuple[int, int] | None = None,
) -> dict:
    """Write the composition's .ora, .psd, flattened .png and a provenance sidecar."""
    where = f"compositions.{name}"
    layers = build_layers(background, elements, size, where)
    merged = to_image(flatten(layers))
    write_ora(layers, merged, outputs["ora"])
    write_psd(layers, outputs["psd"])
    with atomic_path(outputs["png"]) as tmp:
        merged.save(tmp, format="PNG")
    record = {
        "name": name,
        "size": list(merged.size),
        "mode": merged.mode,
        "layers": [
            {
                "name": layer.name,
                "role": layer.role,
                "opacity": layer.opacity,
                "source": layer.source,
                "sha256": sha256_file(layer.source),
            }
            for layer in layers
        ],
        "outputs": outputs,
        "licences": layer_licences(layers),
    }
    write_json(outputs["provenance"], record)
    log.info(
        "composition %s: %d layers, %dx%d; wrote %s",
        name,
        len(layers),
        *merged.size,
        ", ".join(outputs.values()),
    )
    return record
