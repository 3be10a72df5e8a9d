"""Pen-and-ink rendering of transparent assets.

An object is a `Drawing`: a paper-tone fill (polygons painted in order, 255 adds and 0
cuts), hatched regions and ink strokes. `rasterise` draws the three masks with Pillow at
`supersample` times the output size and box-reduces them (anti-aliased coverage), then
layers ink over paper in premultiplied colour. Scenes of several objects paint each object
on its own layer and composite the layers far to near with premultiplied "over": a nearer
object's opaque paper hides the lines behind it.

Hand-drawn quality: each stroke wobbles (two low-frequency sines across the line), its
width follows the pen pressure (thinner at both ends), and it overshoots its end points a
little; closed outlines are drawn as a few overlapping strokes, lifted at sharp corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from blkassist.stencil.composite import over_into, unpremultiply
from blkassist.stencil.geometry import Placed, check_depth_order, outline, project, solid


@dataclass(frozen=True)
class InkStyle:
    """How one asset is inked. Colours are sRGB in [0, 1]; lengths in output pixels."""

    ink: tuple[float, float, float]
    paper: tuple[float, float, float]
    width: float  # nominal pen width
    opacity: float = 1.0  # the whole asset's opacity (BG-overlay elements are translucent)
    silhouette_scale: float = 1.3  # outlines are drawn heavier than inner edges
    wobble: float = 0.6  # amplitude of the hand's wobble
    pressure: float = 0.45  # 0: constant width; 1: ends taper to nothing
    overshoot: float = 1.5  # how far a stroke runs past its end point, in pen widths
    hatching: bool = True
    hatch_spacing: float = 6.0
    hatch_width: float = 0.6  # relative to the pen width
    supersample: int = 3

    @classmethod
    def from_dict(cls, values: dict) -> InkStyle:
        values = dict(values)
        for key in ("ink", "paper"):
            values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class Stroke:
    points: np.ndarray  # (N, 2) polyline in output pixels
    width: float
    seed: int


@dataclass
class Hatch:
    """Parallel ink lines clipped to `region` (polygon ops like the fill)."""

    region: list[tuple[np.ndarray, int]]
    angle: float  # radians, in image coordinates
    spacing: float
    cross: bool = False
    seed: int = 0
    shadow_offset: tuple[float, float] | None = None  # hatch only where the shifted fill is not


@dataclass
class Drawing:
    fill: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (polygon, 255 or 0)
    strokes: list[Stroke] = field(default_factory=list)
    hatches: list[Hatch] = field(default_factory=list)

    def bounds(self, pad: float) -> tuple[float, float, float, float]:
        points = [p for p, _ in self.fill] + [s.points for s in self.strokes]
        stacked = np.concatenate(points, axis=0)
        (x0, y0), (x1, y1) = stacked.min(axis=0), stacked.max(axis=0)
        return x0 - pad, y0 - pad, x1 + pad, y1 + pad


# -- strokes -------------------------------------------------------------------------------


def _resample(points: np.ndarray, spacing: float, extend: tuple[float, float]):
    """Points every `spacing` px along the polyline, extended past both ends along the end
    tangents by `extend` px; with their arc positions from the extended start, and the
    extended length."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], steps > 1e-9])
    points, steps = points[keep], steps[steps > 1e-9]
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    length = arc[-1]
    count = max(math.ceil((length + sum(extend)) / spacing), 2) + 1
    u = np.linspace(-extend[0], length + extend[1], count)
    inside = np.stack([np.interp(np.clip(u, 0, length), arc, points[:, i]) for i in (0, 1)], 1)
    head = (points[1] - points[0]) / steps[0]
    tail = (points[-1] - points[-2]) / steps[-1]
    inside += np.minimum(u, 0)[:, None] * head + np.maximum(u - length, 0)[:, None] * tail
    return inside, u + extend[0], length + sum(extend)


def stroke_polygon(stroke: Stroke, style: InkStyle) -> np.ndarray:
    """The outline of one hand-drawn stroke (a closed polygon in output pixels)."""
    rng = np.random.default_rng(stroke.seed)
    width = stroke.width
    extend = tuple(style.overshoot * width * rng.uniform(0.3, 1.0, 2))
    spacing = max(0.5, min(2.0, width / 2))
    path, u, total = _resample(np.asarray(stroke.points, float), spacing, extend)
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    # Wobble: a slow drift over the whole stroke and a faster tremor, both across the line.
    waves = [(total * rng.uniform(0.8, 1.6), 1.0), (rng.uniform(25, 60), 0.35)]
    offset = sum(a * np.sin(2 * np.pi * u / wl + rng.uniform(0, 2 * np.pi)) for wl, a in waves)
    path = path + normal * (style.wobble * offset / 1.35)[:, None]
    t = np.clip(u / total, 0.0, 1.0)
    pen = (1 - style.pressure) + style.pressure * np.sin(np.pi * t) ** 0.6
    pen *= 1 + 0.08 * np.sin(2 * np.pi * u / rng.uniform(30, 80) + rng.uniform(0, 2 * np.pi))
    half = (width * np.maximum(pen, 0.15) / 2)[:, None]
    return np.concatenate([path + normal * half, (path - normal * half)[::-1]])


def closed_strokes(contour: np.ndarray, width: float, seed: int, corner_deg: float = 50.0):
    """A closed outline drawn the way a hand does: lifted at sharp corners, else in two or
    three overlapping arcs."""
    rng = np.random.default_rng(seed)
    n = len(contour)
    before = contour - np.roll(contour, 3, axis=0)
    after = np.roll(contour, -3, axis=0) - contour
    # The turn at each point: the angle between the incoming and the outgoing direction.
    turn = np.abs(np.angle((after @ (1, 1j)) * np.conj(before @ (1, 1j))))
    corners = [
        i
        for i in range(n)
        if math.degrees(turn[i]) > corner_deg
        and turn[i] >= turn[(i - 1) % n]
        and turn[i] >= turn[(i + 1) % n]
    ]
    if len(corners) < 2:
        start = int(rng.integers(n))
        pieces = int(rng.integers(2, 4))
        corners = sorted((start + k * n // pieces) % n for k in range(pieces))
    overlap = 0 if len(corners) > 3 else max(2, n // 40)  # arcs cross a little at a lift
    strokes = []
    for k, start in enumerate(corners):
        end = corners[(k + 1) % len(corners)]
        span = (end - start) % n or n
        index = np.arange(start - overlap, start + span + overlap + 1) % n
        strokes.append(Stroke(contour[index], width, int(rng.integers(2**31))))
    return strokes


# -- rasterising ---------------------------------------------------------------------------


def _paint_ops(size, ops, scale, x0, y0) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for polygon, value in ops:
        xy = ((np.asarray(polygon) - (x0, y0)) * scale).ravel().tolist()
        draw.polygon(xy, fill=value)
    return mask


def _hatch_into(lines: Image.Image, hatch: Hatch, style: InkStyle, x0, y0, fill: Image.Image):
    """Draw the hatch into `lines` (the supersampled crop), working only on its region's
    bounding box."""
    ss = style.supersample
    points = np.concatenate([np.asarray(p) for p, _ in hatch.region]) - (x0, y0)
    bx0, by0 = np.maximum(np.floor(points.min(axis=0) * ss).astype(int) - 2, 0)
    bx1, by1 = np.minimum(np.ceil(points.max(axis=0) * ss).astype(int) + 2, lines.size)
    if bx1 <= bx0 or by1 <= by0:
        return
    box = (int(bx1 - bx0), int(by1 - by0))
    region = _paint_ops(box, hatch.region, ss, x0 + bx0 / ss, y0 + by0 / ss)
    region = np.asarray(region, dtype=np.float32) / 255
    if hatch.shadow_offset is not None:  # the side away from the light: fill minus shifted fill
        dx, dy = (round(v * ss) for v in hatch.shadow_offset)
        shifted = np.asarray(fill.crop((bx0 - dx, by0 - dy, bx1 - dx, by1 - dy)))
        region *= 1 - shifted.astype(np.float32) / 255
    rows, cols = np.nonzero(region > 0.5)
    if len(rows) == 0:
        return
    rng = np.random.default_rng(hatch.seed)
    strokes = Image.new("L", box, 0)
    draw = ImageDraw.Draw(strokes)
    line_width = max(1, round(style.width * style.hatch_width * ss))
    cx, cy = cols.mean(), rows.mean()
    reach = math.hypot(np.ptp(cols) + 1, np.ptp(rows) + 1)
    angles = [hatch.angle] + ([hatch.angle + math.pi / 2.4] if hatch.cross else [])
    for angle in angles:
        spacing = hatch.spacing * ss
        for k in range(-int(reach / spacing) - 1, int(reach / spacing) + 2):
            a = angle + rng.normal(0, 0.025)
            d, n = (math.cos(a), math.sin(a)), (-math.sin(a), math.cos(a))
            c = k * spacing + rng.uniform(-0.15, 0.15) * spacing
            px, py = cx + n[0] * c, cy + n[1] * c
            end = (px - d[0] * reach, py - d[1] * reach, px + d[0] * reach, py + d[1] * reach)
            draw.line(end, fill=255, width=line_width)
    clipped = Image.fromarray((np.asarray(strokes, dtype=np.float32) * region).astype(np.uint8))
    target = (int(bx0), int(by0), int(bx1), int(by1))
    lines.paste(ImageChops.lighter(lines.crop(target), clipped), target[:2])


def _reduce(mask: Image.Image, factor: int) -> np.ndarray:
    return np.asarray(mask.reduce(factor), dtype=np.float32) / 255.0


def rasterise(drawing: Drawing, style: InkStyle, canvas_size: tuple[int, int]):
    """The drawing as an opaque-inked premultiplied RGBA crop and its top-left corner on the
    canvas (`paint` applies the element's opacity)."""
    ss = style.supersample
    pad = style.width * (style.silhouette_scale + style.overshoot) + 3 * style.wobble + 2
    bx0, by0, bx1, by1 = drawing.bounds(pad)
    x0, y0 = max(math.floor(bx0), 0), max(math.floor(by0), 0)
    x1 = min(math.ceil(bx1), canvas_size[0])
    y1 = min(math.ceil(by1), canvas_size[1])
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 4), np.float32), x0, y0
    size = ((x1 - x0) * ss, (y1 - y0) * ss)
    fill_mask = _paint_ops(size, drawing.fill, ss, x0, y0)
    ink_mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(ink_mask)
    for stroke in drawing.strokes:
        polygon = stroke_polygon(stroke, style)
        draw.polygon(((polygon - (x0, y0)) * ss).ravel().tolist(), fill=255)
    fill = _reduce(fill_mask, ss)[..., None]
    ink = _reduce(ink_mask, ss)[..., None]
    hatch_mask = Image.new("L", size, 0)
    if style.hatching:
        for spec in drawing.hatches:
            _hatch_into(hatch_mask, spec, style, x0, y0, fill_mask)
    hatch = _reduce(hatch_mask, ss)[..., None]
    paper = np.asarray(style.paper, np.float32)
    ink_colour = np.asarray(style.ink, np.float32)
    colour = paper * fill
    alpha = fill
    for cover in (hatch, ink):  # ink over paper, premultiplied
        colour = ink_colour * cover + colour * (1 - cover)
        alpha = cover + alpha * (1 - cover)
    return np.concatenate([colour, alpha], axis=-1).astype(np.float32), x0, y0


def paint(drawings: list[Drawing], style: InkStyle, size: tuple[int, int]) -> np.ndarray:
    """Drawings composited far to near on a transparent canvas; straight uint8 RGBA out."""
    canvas = np.zeros((size[1], size[0], 4), np.float32)
    for drawing in drawings:
        layer, x0, y0 = rasterise(drawing, style, size)
        over_into(canvas, layer, x0, y0)
    canvas *= style.opacity  # a translucent element is one sheet, not see-through layers
    return unpremultiply(canvas)


# -- solids --------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """Projected (unit-focal) coordinates -> output pixels."""

    scale: float
    offset: tuple[float, float]

    def to_pixels(self, projected: np.ndarray) -> np.ndarray:
        return projected * self.scale + np.asarray(self.offset)


def fit_view(objects: list[Placed], size: tuple[int, int], margin: float) -> View:
    """The view that centres the objects' outlines in the canvas, `margin` of each side free."""
    points = np.concatenate([outline(o) for o in objects])
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    w, h = size
    scale = min(w * (1 - 2 * margin) / (x1 - x0), h * (1 - 2 * margin) / (y1 - y0))
    return View(scale, (w / 2 - scale * (x0 + x1) / 2, h / 2 - scale * (y0 + y1) / 2))


def solid_drawing(
    placed: Placed, view: View, style: InkStyle, light, seed: int, hatch_threshold: float = 0.45
) -> Drawing:
    """Paper-filled outline, visible edges in ink (outline heavier), hatched shaded faces."""
    rng = np.random.default_rng(seed)
    pixels = view.to_pixels(project(placed.world_vertices()))
    drawing = Drawing(fill=[(view.to_pixels(outline(placed)), 255)])
    for (a, b), silhouette in placed.visible_edges():
        width = style.width * (style.silhouette_scale if silhouette else 1.0)
        drawing.strokes.append(Stroke(pixels[[a, b]], width, int(rng.integers(2**31))))
    light = np.asarray(light, float) / np.linalg.norm(light)
    shape = solid(placed.name)
    normals = placed.world_normals()
    for index, front in enumerate(placed.front_faces()):
        shade = (1 - float(np.dot(normals[index], light))) / 2  # 0 lit .. 1 turned away
        if not front or shade < hatch_threshold:
            continue
        polygon = pixels[list(shape.faces[index])]
        facing = normals[index][:2] * (1, -1)
        angle = math.atan2(facing[1], facing[0]) + math.pi / 2 + rng.normal(0, 0.15)
        spacing = style.hatch_spacing * (1.9 - 1.4 * shade)
        drawing.hatches.append(
            Hatch(
                [(polygon, 255)], angle, spacing, cross=shade > 0.75, seed=int(rng.integers(2**31))
            )
        )
    return drawing


def placed_from_spec(spec: dict) -> Placed:
    return Placed(spec["solid"], tuple(spec["rotation"]), tuple(spec["centre"]), spec["radius"])


def render_solids(objects: list[dict], size, style: InkStyle, light, margin: float) -> np.ndarray:
    """Solids listed far to near (disjoint depth slabs) as one transparent RGBA asset."""
    placed = [placed_from_spec(o) for o in objects]
    check_depth_order(placed)
    view = fit_view(placed, size, margin)
    drawings = [
        solid_drawing(p, view, style, light, o["seed"])
        for p, o in zip(placed, objects, strict=True)
    ]
    return paint(drawings, style, size)
