"""The built-in offline captioner: templates over the collection's folder taxonomy plus
simple measurements of the image (ink coverage, line density, stroke direction), and a
texture vocabulary for texture-primitive crops (blkassist.texture)."""

from __future__ import annotations

import numpy as np
import pyvips

ANALYSIS_SIDE = 384  # measurements are made on a small copy


def analyse(image_path: str) -> dict[str, float | str]:
    image = pyvips.Image.thumbnail(image_path, ANALYSIS_SIDE)
    if image.hasalpha():
        image = image.flatten(background=255)
    return analyse_pixels(image.numpy())


def analyse_pixels(pixels: np.ndarray) -> dict[str, float | str]:
    """The measurements of `analyse` on uint8 pixels (grey or RGB) already at analysis size."""
    rgb = pixels.astype(np.float32) / 255
    if rgb.ndim == 2:
        rgb = rgb[..., None].repeat(3, axis=2)
    luma = rgb[..., :3] @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    paper = float(np.percentile(luma, 90))
    ink = luma < paper - 0.25
    gy, gx = np.gradient(luma)
    magnitude = np.hypot(gx, gy)
    edges = magnitude > 0.12  # above paper grain
    # Stroke direction from the gradient structure tensor: strokes run across the gradient.
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    gradient_angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    coherence = np.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-9)
    saturation = float((rgb[..., :3].max(axis=2) - rgb[..., :3].min(axis=2)).mean())
    paper_rgb = rgb[..., :3][luma >= paper - 0.02].mean(axis=0)
    return {
        "ink_coverage": float(ink.mean()),
        "edge_density": float(edges.mean()),
        "stroke_angle": float((gradient_angle + 90) % 180),
        "coherence": float(coherence),
        "saturation": saturation,
        "aspect": rgb.shape[1] / rgb.shape[0],
        "paper_luma": paper,
        "paper_warmth": float(paper_rgb[0] - paper_rgb[2]),  # red minus blue of the paper
    }


def _singular(folder: str) -> str:
    name = folder.replace("_", " ").replace("-", " ").strip()
    return {"details": "detail close-up", "compositions": "composition"}.get(
        name.lower(), name[:-1] if name.lower().endswith("s") and len(name) > 3 else name
    )


def _direction(angle: float, coherence: float) -> str:
    if coherence < 0.15:
        return "strokes running in many directions"
    if angle < 22.5 or angle >= 157.5:
        return "strokes running mostly horizontally"
    if 67.5 <= angle < 112.5:
        return "strokes running mostly vertically"
    return "strokes running mostly diagonally"


def caption(image_path: str, taxonomy: str, collection: str, description: str = "") -> str:
    return caption_from_facts(analyse(image_path), taxonomy, description)


def caption_from_facts(facts: dict, taxonomy: str, description: str = "") -> str:
    """The caption of an image measured by `analyse` / `analyse_pixels`."""
    subject = _singular(taxonomy.split("/")[-1]) if taxonomy else "artwork"
    medium = "pen and ink" if facts["saturation"] < 0.08 else "ink and colour"
    coverage = facts["ink_coverage"]
    tone = "sparse" if coverage < 0.08 else "moderate" if coverage < 0.25 else "dense"
    density = facts["edge_density"]
    texture = (
        "fine hatching and cross-hatching"
        if density > 0.25
        else "open contour lines and stippling"
        if density > 0.08
        else "a few bold lines on open paper"
    )
    aspect = facts["aspect"]
    shape = "landscape" if aspect > 1.15 else "portrait" if aspect < 0.87 else "square"
    parts = [
        f"a {subject} in {medium}",
        f"{tone} ink on warm paper",
        texture,
        _direction(facts["stroke_angle"], facts["coherence"]),
        f"{shape} format",
    ]
    if description:
        parts.append(description.strip().rstrip("."))
    return ", ".join(parts) + "."


def _tone(coverage: float) -> str:
    return "sparse" if coverage < 0.08 else "moderate" if coverage < 0.25 else "dense"


def _paper(facts: dict) -> str:
    if facts["paper_luma"] < 0.45:
        return "dark"
    warmth = facts["paper_warmth"]
    return "warm" if warmth > 0.03 else "cool" if warmth < -0.03 else "white"


def _axis(orientation: float) -> str:
    """Words for a stroke direction in degrees (0 = horizontal, 90 = vertical)."""
    if orientation < 22.5 or orientation >= 157.5:
        return "horizontal"
    return "vertical" if 67.5 <= orientation < 112.5 else "diagonal"


def texture_caption(image_path: str, primitive: str, orientation: float) -> str:
    """A short texture-centric caption ("dense ink cross-hatching on warm paper") for a
    crop of a known primitive (hatch, cross-hatch, grain, stroke)."""
    facts = analyse(image_path)
    tone = _tone(facts["ink_coverage"])
    medium = "ink" if facts["saturation"] < 0.08 else "coloured ink"
    paper = f"{_paper(facts)} paper"
    if primitive == "hatch":
        return f"{tone} {medium} hatching, {_axis(orientation)} parallel strokes, on {paper}"
    if primitive == "cross-hatch":
        return f"{tone} {medium} cross-hatching on {paper}"
    if primitive == "stroke":
        return f"{tone} long flowing {medium} strokes on {paper}"
    if primitive == "grain":
        if facts["ink_coverage"] < 0.03:
            return f"fine {paper} grain with faint {medium} specks"
        return f"{tone} {medium} stippling and grain on {paper}"
    raise ValueError(f"unknown texture primitive {primitive!r}")
