"""Premultiplied-alpha images: conversion, Porter-Duff "over", checkerboard previews.

Premultiplied float RGBA (H, W, 4) in [0, 1] is the working form: resampling, averaging and
compositing it never bleeds the colour of transparent pixels into an object's edge. Files
hold straight (unpremultiplied) 8-bit RGBA, as PNG expects.
"""

from __future__ import annotations

import numpy as np
import pyvips


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """Straight uint8 RGBA -> premultiplied float32 in [0, 1]."""
    image = rgba.astype(np.float32) / 255.0
    image[..., :3] *= image[..., 3:4]
    return image


def unpremultiply(image: np.ndarray) -> np.ndarray:
    """Premultiplied float RGBA -> straight uint8 RGBA; fully transparent pixels get colour 0."""
    alpha = np.clip(image[..., 3:4], 0.0, 1.0)
    colour = np.divide(image[..., :3], alpha, out=np.zeros_like(image[..., :3]), where=alpha > 0)
    colour = np.clip(colour, 0.0, 1.0)
    alpha8 = np.round(alpha * 255.0)
    colour8 = np.where(alpha8 > 0, np.round(colour * 255.0), 0.0)
    return np.concatenate([colour8, alpha8], axis=-1).astype(np.uint8)


def over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Porter-Duff `top` over `bottom`, both premultiplied."""
    return top + bottom * (1.0 - top[..., 3:4])


def over_into(canvas: np.ndarray, layer: np.ndarray, x0: int, y0: int) -> None:
    """Composite `layer` over `canvas` in place with its top-left corner at (x0, y0); the
    part outside the canvas is dropped."""
    h, w = layer.shape[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    part = layer[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    canvas[cy0:cy1, cx0:cx1] = over(part, canvas[cy0:cy1, cx0:cx1])


def resize(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Straight uint8 RGBA resized on float premultiplied colour with libvips' linear
    kernel (anti-aliased when reducing): its weights are never negative, so an edge pixel's
    colour stays a blend of the object's own colours. Pillow's RGBA resize goes through
    8-bit premultiplied colour, which throws away the colour of low-alpha pixels."""
    image = pyvips.Image.new_from_array(premultiply(rgba))
    image = image.resize(width / rgba.shape[1], vscale=height / rgba.shape[0], kernel="linear")
    out = image.numpy()
    if out.shape[:2] != (height, width):  # libvips rounds the size; pad or trim the last pixel
        out = np.pad(
            out, ((0, max(0, height - out.shape[0])), (0, max(0, width - out.shape[1])), (0, 0))
        )[:height, :width]
    out = np.asarray(out, np.float32)
    out[..., 3] = np.clip(out[..., 3], 0, 1)
    out[..., :3] = np.clip(out[..., :3], 0, out[..., 3:4])
    return unpremultiply(out)


def checkerboard(height: int, width: int, cell: int = 16, grey=(0.45, 0.55)) -> np.ndarray:
    """An opaque premultiplied checkerboard (the usual transparency preview)."""
    yy, xx = np.mgrid[0:height, 0:width]
    tone = np.where(((yy // cell) + (xx // cell)) % 2 == 0, grey[0], grey[1]).astype(np.float32)
    return np.stack([tone, tone, tone, np.ones_like(tone)], axis=-1)


def coverage(rgba: np.ndarray) -> float:
    """Total alpha of a straight uint8 RGBA image, in pixels."""
    return float(rgba[..., 3].astype(np.float64).sum() / 255.0)
