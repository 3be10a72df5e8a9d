"""BLK-Stencil data: exact solids, hidden lines, occlusion, alpha, alpha-safe augmentation,
curriculum shares, determinism."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours
from skimage.transform import AffineTransform, warp

from blkassist.config import validate_config
from blkassist.errors import ConfigError
from blkassist.stencil.augment import Augmentation, augment, colour_map, fit_scale
from blkassist.stencil.composite import coverage, over, premultiply, resize
from blkassist.stencil.dataset import (
    build_stencil_dataset,
    caption,
    category_counts,
    check_stencil_config,
    plan_synthetic,
    render_spec,
)
from blkassist.stencil.geometry import SOLIDS, Placed, facing_camera, project, solid
from blkassist.stencil.render import InkStyle, fit_view, paint, render_solids, solid_drawing
from blkassist.stencil.shapes import SHAPES, cloud_drawing, shape_drawing
from tests.conftest import REPO

INK = (0.08, 0.07, 0.09)
PAPER = (0.96, 0.94, 0.89)
# Geometry checks use a steady hand: no wobble, no overshoot, constant width.
STEADY = InkStyle(
    ink=INK, paper=PAPER, width=2.0, wobble=0.0, pressure=0.0, overshoot=0.0, hatching=False
)
HAND = InkStyle(ink=INK, paper=PAPER, width=3.0)


def test_solids_are_exact():
    expected = {
        "tetrahedron": (4, 6, 4, 3),
        "cube": (8, 12, 6, 4),
        "octahedron": (6, 12, 8, 3),
        "dodecahedron": (20, 30, 12, 5),
        "icosahedron": (12, 30, 20, 3),
    }
    for name in SOLIDS:
        shape = solid(name)
        v, e, f, sides = expected[name]
        assert (len(shape.vertices), len(shape.edges), len(shape.faces)) == (v, e, f)
        assert all(len(face) == sides for face in shape.faces)
        assert np.allclose(np.linalg.norm(shape.vertices, axis=1), 1.0)
        lengths = [np.linalg.norm(shape.vertices[a] - shape.vertices[b]) for a, b in shape.edges]
        assert np.allclose(lengths, lengths[0])  # regular: every edge the same length
        for face, normal in zip(shape.faces, shape.normals, strict=True):
            centre = shape.vertices[list(face)].mean(axis=0)
            assert np.dot(normal, centre) > 0  # outward
            assert np.allclose((shape.vertices[list(face)] - centre) @ normal, 0, atol=1e-9)


# (solid, direction turned towards the camera, visible edges, outline corners)
VIEWS = [
    ("tetrahedron", "face", 3, 3),
    ("tetrahedron", "vertex", 6, 3),
    ("cube", "face", 4, 4),
    ("cube", "vertex", 9, 6),
    ("octahedron", "vertex", 8, 4),
    ("octahedron", "face", 9, 6),
    ("dodecahedron", "face", 20, 10),
    ("icosahedron", "vertex", 20, 10),
]


def _towards(name: str, kind: str) -> list[float]:
    shape = solid(name)
    direction = shape.normals[0] if kind == "face" else shape.vertices[0]
    return facing_camera(direction)


def _render_one(name, kind, size=384, style=STEADY, distance=8.0):
    placed = Placed(name, tuple(_towards(name, kind)), (0.0, 0.0, distance))
    view = fit_view([placed], (size, size), 0.15)
    drawing = solid_drawing(placed, view, style, light=(0, 0, -1), seed=0)
    return placed, view, drawing, paint([drawing], style, (size, size))


def _corners(alpha: np.ndarray, tolerance: float) -> int:
    contour = max(find_contours(np.pad(alpha, 1).astype(float), 127.5), key=len)[:-1]
    # Start at a corner (the point farthest from the centre), else the start counts as one.
    start = int(np.argmax(np.linalg.norm(contour - contour.mean(axis=0), axis=1)))
    contour = np.roll(contour, -start, axis=0)
    return len(approximate_polygon(np.vstack([contour, contour[:1]]), tolerance)) - 1


@pytest.mark.parametrize(("name", "kind", "edges", "corners"), VIEWS)
def test_visible_edges_and_outline_for_known_views(name, kind, edges, corners):
    placed, _, drawing, rgba = _render_one(name, kind)
    assert len(placed.visible_edges()) == edges
    assert sum(silhouette for _, silhouette in placed.visible_edges()) == corners
    assert len(drawing.strokes) == edges  # the renderer inks exactly the visible edges
    assert _corners(rgba[..., 3], tolerance=2.5) == corners  # the drawn outline


def test_cube_face_on_is_a_square_and_corner_on_hides_three_edges():
    _, _, _, face_on = _render_one("cube", "face")
    rows, cols = np.nonzero(face_on[..., 3])
    box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert abs(np.ptp(rows) - np.ptp(cols)) <= 1  # square
    assert (face_on[..., 3] > 0).sum() / box > 0.99  # fills its bounding box
    placed, view, _, corner_on = _render_one("cube", "vertex")
    # The near and the hidden far vertex project to the centre; of the six rays from it to
    # the hexagon's corners, only the three edges from the near vertex may be inked.
    pixels = view.to_pixels(project(placed.world_vertices()))
    centre = pixels[np.argmin(placed.world_vertices()[:, 2])]  # the near vertex
    hexagon = [p for p in pixels if np.linalg.norm(p - centre) > 20]
    assert len(hexagon) == 6
    inked = []
    for corner in hexagon:
        x, y = np.round(centre + 0.5 * (corner - centre)).astype(int)
        inked.append(corner_on[y - 1 : y + 2, x - 1 : x + 2, :3].min() < 100)
    assert sorted(inked) == [False] * 3 + [True] * 3


def _cube(x, z, radius, seed):
    return {
        "solid": "cube",
        "rotation": facing_camera([0, 0, 1]),
        "centre": [x, 0.0, z],
        "radius": radius,
        "seed": seed,
    }


def test_nearer_object_hides_the_lines_behind_it():
    far, near = _cube(0.0, 12.0, 1.5, 1), _cube(0.9, 6.0, 0.6, 2)
    size = (320, 320)
    placed = [
        Placed("cube", tuple(o["rotation"]), tuple(o["centre"]), o["radius"]) for o in (far, near)
    ]
    view = fit_view(placed, size, 0.1)
    far_alone = paint([solid_drawing(placed[0], view, STEADY, (0, 0, -1), 1)], STEADY, size)
    near_alone = paint([solid_drawing(placed[1], view, STEADY, (0, 0, -1), 2)], STEADY, size)
    both = render_solids([far, near], size, STEADY, (0, 0, -1), 0.1)
    near_inside = ndimage.binary_erosion(near_alone[..., 3] == 255, iterations=4)
    far_ink = far_alone[..., :3].max(axis=-1) < 100
    assert (far_ink & near_inside).sum() > 20  # the far cube's edge runs behind the near one
    assert np.array_equal(both[near_inside], near_alone[near_inside])  # ... and is hidden
    assert (far_ink & ~ndimage.binary_dilation(near_alone[..., 3] > 0, iterations=2)).sum() > 50
    with pytest.raises(ValueError, match="not wholly in front"):
        render_solids([far, _cube(0.9, 11.0, 0.6, 2)], size, STEADY, (0, 0, -1), 0.1)


ROLE_OPACITY = {"FG": 1.0, "BG-overlay": 0.6}


def _fill_mask(drawings, size) -> np.ndarray:
    """Where the objects' paper fill fully covers a pixel (2 px in from its edge)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for drawing in drawings:
        for polygon, value in drawing.fill:
            draw.polygon(np.asarray(polygon).ravel().tolist(), fill=value)
    return ndimage.binary_erosion(np.asarray(mask) > 0, iterations=2)


@pytest.mark.parametrize("opacity", ROLE_OPACITY.values())
@pytest.mark.parametrize("kind", ["single", "pair", "cloud", *SHAPES])
def test_alpha_is_zero_outside_full_inside_and_antialiased_at_the_edge(kind, opacity):
    style = InkStyle(ink=INK, paper=PAPER, width=3.0, opacity=opacity)
    size = (320, 256)
    if kind in ("single", "pair"):
        objects = [_cube(0, 6, 1, 3) | {"rotation": [0.3, 0.2, 0.1, 0.927]}]
        if kind == "pair":
            objects = [_cube(1.0, 9, 1, 3), _cube(-0.5, 5, 1, 4)]
        placed = [
            Placed("cube", tuple(o["rotation"]), tuple(o["centre"]), o["radius"]) for o in objects
        ]
        view = fit_view(placed, size, 0.12)
        drawings = [
            solid_drawing(p, view, style, (-0.5, 0.7, -0.5), o["seed"])
            for p, o in zip(placed, objects, strict=True)
        ]
    elif kind == "cloud":
        spec = {
            "centre": [0.5, 0.55],
            "width": 0.76,
            "height": 0.5,
            "seed": 5,
            "bumps": [[0.1, 0.5], [0.4, 0.8], [0.8, 0.6]],
            "light": [-0.6, -0.8],
        }
        drawings = [cloud_drawing(spec, size, style)]
    else:
        spec = {
            "shape": kind,
            "centre": [0.5, 0.5],
            "radius": 0.38,
            "angle": 15,
            "seed": 4,
            "light": [-0.6, -0.8],
        }
        drawings = [shape_drawing(spec, size, style)]
    rgba = paint(drawings, style, size)
    alpha = rgba[..., 3].astype(int)
    full = round(255 * opacity)
    inside = _fill_mask(drawings, size)
    assert inside.sum() > 2000 and np.all(alpha[inside] == full)
    border = np.concatenate(
        [alpha[:8].ravel(), alpha[-8:].ravel(), alpha[:, :8].ravel(), alpha[:, -8:].ravel()]
    )
    assert np.all(border == 0)
    assert (alpha == 0).sum() > 0.2 * alpha.size  # the background is transparent
    edge = (alpha > 0) & (alpha < full)
    outline = (alpha > 0) & ~ndimage.binary_erosion(alpha > 0)
    assert edge.sum() > 0.5 * outline.sum()  # the silhouette is anti-aliased, not stair-stepped
    assert np.all(rgba[alpha == 0, :3] == 0)


# -- augmentation ---------------------------------------------------------------------------

AUGMENTATIONS = [
    Augmentation(flip, angle, scale, brightness, contrast, grain, seed=7)
    for flip, angle, scale, (brightness, contrast), grain in itertools.product(
        [False, True],
        [-15.0, -6.0, 0.0, 9.0, 15.0],
        [0.88, 1.0, 1.12],
        [(0.0, 1.0), (0.05, 0.92), (-0.04, 1.08)],
        [0.0, 0.02],
    )
]


def _disc(colour, size=96) -> np.ndarray:
    """One colour, a soft anti-aliased edge, and garbage colour under alpha 0."""
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx - size / 2 + 3, yy - size / 2 + 5)
    alpha = np.clip((size * 0.3 - distance) / 2.5 + 0.5, 0, 1)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[alpha == 0, :3] = (0, 255, 0)  # what an editor may leave under transparency
    rgba[..., 3] = np.round(alpha * 255)
    return rgba


def _fringe(rgba: np.ndarray, low, high, tolerance: float) -> int:
    """Covered pixels whose colour leaves [low, high] by more than `tolerance` levels."""
    covered = rgba[..., 3] > 0
    colour = rgba[covered, :3].astype(float)
    return int(
        ((colour < np.asarray(low) - tolerance) | (colour > np.asarray(high) + tolerance))
        .any(axis=1)
        .sum()
    )


def _tolerance(aug: Augmentation) -> float:
    return 1.5 + 3 * aug.grain * 255  # 8-bit rounding + the bounded grain


@pytest.fixture(scope="module")
def inked_asset() -> np.ndarray:
    return render_solids(
        [_cube(0, 6, 1, 3) | {"rotation": [0.3, 0.2, 0.1, 0.927]}],
        (128, 128),
        InkStyle(ink=INK, paper=PAPER, width=2.0),
        (-0.5, 0.7, -0.5),
        0.15,
    )


@pytest.mark.parametrize(
    "aug", AUGMENTATIONS, ids=lambda a: f"{a.flip}-{a.angle}-{a.scale}-{a.brightness}-{a.grain}"
)
def test_no_fringe_and_coverage_kept_after_augmentation(aug, inked_asset):
    light = (244, 236, 220)
    disc = _disc(light)
    out = augment(disc, aug)
    target = colour_map(aug, light)
    assert _fringe(out, target, target, _tolerance(aug)) == 0  # edge keeps the object colour
    out = augment(inked_asset, aug)
    ink, paper = colour_map(aug, np.multiply(INK, 255)), colour_map(aug, np.multiply(PAPER, 255))
    low, high = np.minimum(ink, paper), np.maximum(ink, paper)
    assert _fringe(out, low, high, _tolerance(aug)) == 0  # no darker or lighter rim
    for before in (disc, inked_asset):
        after = augment(before, aug)
        assert coverage(after) == pytest.approx(coverage(before) * aug.scale**2, rel=0.015)


def test_fringe_check_catches_straight_alpha_resampling():
    """The check above bites: resampling straight colour drags in the colour stored under
    transparent pixels (a fringe), which premultiplied resampling does not."""
    disc = _disc((244, 236, 220))
    turn = AffineTransform(rotation=math.radians(9), translation=(8, -6))
    naive = np.round(warp(disc / 255.0, turn, order=1) * 255).astype(np.uint8)
    assert _fringe(naive, (244, 236, 220), (244, 236, 220), 1.5) > 20


def test_fit_scale_keeps_an_object_near_the_border_whole():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[4:96, 30:70] = (200, 100, 50, 255)
    aug = fit_scale(Augmentation(angle=15, scale=1.12), rgba)
    assert aug.scale < 1.0
    after = augment(rgba, aug)
    assert coverage(after) == pytest.approx(coverage(rgba) * aug.scale**2, rel=0.01)
    assert after[[0, -1], :, 3].max() == 0 and after[:, [0, -1], 3].max() == 0


def test_over_is_premultiplied_porter_duff():
    top = premultiply(np.array([[[255, 0, 0, 128]]], np.uint8))
    bottom = premultiply(np.array([[[0, 0, 255, 255]]], np.uint8))
    result = over(top, bottom)[0, 0]
    a = 128 / 255
    assert np.allclose(result, [a, 0, 1 - a, 1.0], atol=1e-6)


# -- training sets ---------------------------------------------------------------------------

SHARES = [
    {"pair": 0.4, "triple": 0.2, "cloud": 0.05, "shape": 0.05},
    {"pair": 0.4, "triple": 0.2, "cloud": 0.0, "shape": 0.0},
    {"pair": 0.0, "triple": 0.0, "cloud": 0.5, "shape": 0.5},
    {"pair": 0.33, "triple": 0.33, "cloud": 0.17, "shape": 0.17},
]


@pytest.mark.parametrize(("size", "shares"), list(itertools.product([1, 7, 20, 101, 1000], SHARES)))
def test_category_counts_follow_the_shares(size, shares):
    counts = category_counts(size, shares)
    assert sum(counts.values()) == size
    wanted = {"single": 1 - sum(shares.values()), **shares}
    for category, share in wanted.items():
        assert abs(counts[category] - share * size) < 1


def test_shares_above_one_are_a_config_error():
    with pytest.raises(ConfigError, match=r"add up to 1\.100"):
        category_counts(10, {"pair": 0.6, "triple": 0.5})


def _settings(**overrides) -> dict:
    config = {"stencil": {"datasets": {"t": {"size": 20, "resolution": 192, **overrides}}}}
    validate_config(config, REPO / "config" / "schema.yaml")
    return config["stencil"]["datasets"]["t"], config["stencil"]["synthetic"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    settings, synthetic = _settings()
    out = tmp_path_factory.mktemp("stencil") / "stencil-t"
    summary = build_stencil_dataset("t", settings, synthetic, [], str(out))
    return out, summary, settings, synthetic


def test_dataset_layout_stages_and_captions(built):
    out, _, settings, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["base"] == {
        k: v for k, v in category_counts(20, settings["shares"]).items() if v
    }
    assert manifest["shares"]["pair"] == pytest.approx(0.4) and manifest["shares"][
        "triple"
    ] == pytest.approx(0.2)
    stages = [(out / s["list"]).read_text().split() for s in manifest["stages"]]
    by_file = {e["file"]: e for e in manifest["assets"]}
    assert {by_file[f]["category"] for f in stages[0]} == {"single"}
    assert {by_file[f]["category"] for f in stages[1]} == {"single", "pair"}
    assert {by_file[f]["category"] for f in stages[2]} == {
        "single",
        "pair",
        "triple",
        "cloud",
        "shape",
    }
    assert set(stages[0]) < set(stages[1]) < set(stages[2]) == set(by_file)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(by_file)
    assert len(pngs) == 20 * (1 + 1 + settings["augment"]["copies"])  # base, mirror, augmented
    for entry in manifest["assets"]:
        path = out / entry["file"]
        text = (out / entry["caption_file"]).read_text().strip()
        assert text == entry["caption"] and text.endswith("transparent background")
        assert f"{entry['z_role']} element" in text and "line weight" in text
        with Image.open(path) as image:
            assert image.mode == "RGBA" and image.size == tuple(entry["size"])
            w, h = image.size
        assert w % 64 == 0 and h % 64 == 0 and abs(w * h / 192**2 - 1) < 0.2
        top = entry["file"].split("/")[:3]
        if entry["category"] == "single":
            assert top[:2] == ["solids", "single"] and top[2] in SOLIDS and top[2] in text
        if entry["variant"] == "flip":
            original = by_file[entry["file"].replace("-flip", "")]
            swapped = (
                original["caption"]
                .replace("left", "@")
                .replace("right", "left")
                .replace("@", "right")
            )
            assert text == swapped
            assert np.array_equal(
                np.asarray(Image.open(path)),
                np.asarray(Image.open(out / original["file"]))[:, ::-1],
            )
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [e["file"] for e in manifest["assets"]]


def test_every_asset_renders_again_from_its_manifest_entry(built):
    out, *_ = built
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["assets"]:
        image = render_spec(entry["spec"])
        if entry["flipped"]:
            image = image[:, ::-1]
        if entry["augmentation"]:
            image = augment(image, Augmentation(**entry["augmentation"]))
        assert np.array_equal(image, np.asarray(Image.open(out / entry["file"]))), entry["file"]


def test_same_seed_same_set_other_seed_other_set(built, tmp_path):
    out, _, settings, synthetic = built
    again = tmp_path / "again"
    build_stencil_dataset("t", settings, synthetic, [], str(again))
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for file in files:
        assert (out / file).read_bytes() == (again / file).read_bytes(), file
    other = plan_synthetic({**settings, "seed": 1}, synthetic)
    assert other != plan_synthetic(settings, synthetic)


def test_caption_template_errors_name_the_key():
    settings, _ = _settings(caption={"template": "{style} {subjct}"})
    with pytest.raises(ConfigError, match=r"caption\.template: unknown field 'subjct'"):
        caption(settings, "cube", "thin", "FG")


@pytest.mark.parametrize("scale", [0.3, 0.5, 0.77, 1.25])
def test_resize_keeps_edge_colours(scale):
    light = (244, 236, 220)
    disc = _disc(light, size=120)
    side = round(120 * scale)
    out = resize(disc, side, side)
    assert out.shape == (side, side, 4)
    assert _fringe(out, light, light, 1.5) == 0
    assert coverage(out) == pytest.approx(coverage(disc) * scale**2, rel=0.02)


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_quarter_turns_match_numpy_exactly(quarter):
    """The turn is counter-clockwise on screen and about the image centre (no half-pixel
    shift): a quarter turn of an odd-sized image is numpy's rot90."""
    rgba = _disc((200, 30, 40), size=41)
    rgba[5:12, 20:23] = (10, 20, 30, 255)
    turned = augment(rgba, Augmentation(angle=90.0 * quarter)).astype(int)
    expected = np.rot90(rgba, quarter).astype(int)
    assert np.abs(turned[..., 3] - expected[..., 3]).max() <= 1
    covered = expected[..., 3] > 0  # (the colour stored under alpha 0 is cleared)
    assert np.abs(turned[covered] - expected[covered]).max() <= 1


def test_z_roles_ink_bg_overlays_lighter_thinner_and_translucent():
    looks = {}
    for role in ("FG", "MG", "BG-overlay"):
        settings, synthetic = _settings(
            z_roles=[role], size=3, shares={"pair": 0.0, "triple": 0.0, "cloud": 0.0, "shape": 0.0}
        )
        rgba = render_spec(plan_synthetic(settings, synthetic)[0])  # the same solid each time
        covered = rgba[..., 3] > 0
        darkness = 255 - rgba[..., :3].min(axis=-1).astype(int)
        looks[role] = (rgba[..., 3].max(), darkness[covered].max(), (darkness > 128).sum())
    assert looks["FG"][0] == looks["MG"][0] == 255 and looks["BG-overlay"][0] == 153
    assert looks["FG"][1] > looks["MG"][1] > looks["BG-overlay"][1]  # lighter ink
    assert looks["FG"][2] > looks["BG-overlay"][2]  # thinner lines: less ink


def test_cross_key_config_errors_name_the_fix():
    base = {
        "corpus": {
            "collections": {"scans": {"path": "s", "artist": "A", "licence": "x", "consent": True}}
        }
    }
    cases = [
        ({"stencil": {"collections": ["nowhere"]}}, "'nowhere' is not a collection"),
        ({"stencil": {"collections": ["scans"]}}, "corpus.collections.scans.alpha: keep"),
        (
            {
                "stencil": {"datasets": {"a": {}}},
                "datasets": {"stencil-a": {"collections": ["scans"]}},
            },
            "both build datasets/stencil-a",
        ),
        (
            {"stencil": {"datasets": {"a": {"shares": {"pair": 0.9, "triple": 0.2}}}}},
            r"stencil\.datasets\.a\.shares add up to 1\.200",
        ),
    ]
    for extra, message in cases:
        config = json.loads(json.dumps({**base, **extra}))
        validate_config(config, REPO / "config" / "schema.yaml")
        with pytest.raises(ConfigError, match=message):
            check_stencil_config(config)
