"""Texture crops: the class of every synthetic primitive, crops where the texture is,
masks, the overlap bound, seeds, small sources, captions that keep edits, the layout."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from blkassist.config import validate_config
from blkassist.corpus.normalise import normalise_collection
from blkassist.errors import ConfigError, InputImageError
from blkassist.flux.data import read_split
from blkassist.fsutil import read_json
from blkassist.texture.captions import caption_crops
from blkassist.texture.dataset import build_texture_dataset
from blkassist.texture.measure import PRIMITIVES, cell_grid, classify, window_features
from blkassist.texture.review import write_texture_review_sheet
from blkassist.texture.select import (
    check_runs,
    class_quotas,
    select_crops,
    texture_sources,
    write_crops,
)
from tests.conftest import REPO

PAPER, INK = 236.0, 30.0
CELL = 16
SIDE = 192  # primitive patches: 12 x 12 cells


# --- synthetic primitives (anti-aliased ink on paper with a little scanner noise) -------


def _ink(distance: np.ndarray, width: float) -> np.ndarray:
    return np.clip(width / 2 + 0.5 - distance, 0, 1)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx, yy


def hatch(height, width, angle, spacing=9.0, line=2.0):
    """Parallel lines running at `angle` degrees (0 = horizontal, 90 = vertical)."""
    xx, yy = _grid(height, width)
    t = np.radians(angle)
    across = -xx * np.sin(t) + yy * np.cos(t)
    return _ink(np.abs(across % spacing - spacing / 2), line)


def cross_hatch(height, width, angle, separation, spacing=9.0):
    return np.maximum(
        hatch(height, width, angle, spacing), hatch(height, width, angle + separation, spacing)
    )


def strokes(height, width, cx, cy, spacing=10.0, line=2.0):
    """Long curving strokes: arcs around (cx, cy), their direction turning across the crop."""
    xx, yy = _grid(height, width)
    radius = np.hypot(xx - cx, yy - cy)
    return _ink(np.abs(radius % spacing - spacing / 2), line)


def grain(height, width, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "speckle":  # paper-like isotropic noise
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 0.8)
        return np.clip(0.3 + 0.25 * noise / noise.std(), 0, 1)
    xx, yy = _grid(height, width)  # stipple: round dots
    ink = np.zeros((height, width), np.float32)
    for x, y in rng.uniform(0, [width, height], (height * width // 70, 2)):
        y0, y1, x0, x1 = int(y) - 3, int(y) + 4, int(x) - 3, int(x) + 4
        window = (slice(max(y0, 0), y1), slice(max(x0, 0), x1))
        dot = _ink(np.hypot(xx[window] - x, yy[window] - y), 3.0)
        ink[window] = np.maximum(ink[window], dot)
    return ink


def scan(ink: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 2.0, ink.shape)
    gray = PAPER + (INK - PAPER) * ink + noise
    return np.clip(gray, 0, 255).round().astype(np.uint8)


def warm_scan(ink: np.ndarray, seed: int = 0) -> np.ndarray:
    """Dark ink on warm cream paper, RGB."""
    paper, dark = np.array([238.0, 230.0, 212.0]), np.array([28.0, 24.0, 30.0])
    noise = np.random.default_rng(seed).normal(0, 2.0, (*ink.shape, 1))
    rgb = paper + (dark - paper) * ink[..., None] + noise
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def primitive_of(ink: np.ndarray) -> str:
    grid = cell_grid(scan(ink), CELL)
    primitive, purity = classify(window_features(grid, SIDE // CELL))
    assert primitive.shape == (1, 1) and 0 <= purity[0, 0] <= 1
    return PRIMITIVES[int(primitive[0, 0])]


# --- classes ----------------------------------------------------------------------------

HATCH_CASES = list(itertools.product(range(0, 180, 15), (7.0, 12.0)))
CROSS_CASES = list(itertools.product(range(0, 180, 30), (30, 45, 60, 90)))
STROKE_CASES = [(cx, cy) for cx in (-60, 0, 96, 192) for cy in (-60, 96, 250)]
GRAIN_CASES = list(itertools.product(range(3), ("speckle", "stipple")))


@pytest.mark.parametrize(("angle", "spacing"), HATCH_CASES)
def test_hatching_at_every_angle_is_hatch(angle, spacing):
    assert primitive_of(hatch(SIDE, SIDE, angle, spacing)) == "hatch"


@pytest.mark.parametrize(("angle", "separation"), CROSS_CASES)
def test_crossing_layers_are_cross_hatch(angle, separation):
    assert primitive_of(cross_hatch(SIDE, SIDE, angle, separation)) == "cross-hatch"


@pytest.mark.parametrize(("cx", "cy"), STROKE_CASES)
def test_curving_strokes_are_stroke(cx, cy):
    assert primitive_of(strokes(SIDE, SIDE, cx, cy)) == "stroke"


@pytest.mark.parametrize(("seed", "kind"), GRAIN_CASES)
def test_isotropic_fine_marks_are_grain(seed, kind):
    assert primitive_of(grain(SIDE, SIDE, seed, kind)) == "grain"


def test_measured_orientation_follows_the_strokes():
    for angle in range(0, 180, 15):
        features = window_features(cell_grid(scan(hatch(SIDE, SIDE, angle)), CELL), SIDE // CELL)
        error = abs((features.orientation[0, 0] - angle + 90) % 180 - 90)
        assert error <= 5, angle


# --- selection --------------------------------------------------------------------------


def settings(**overrides) -> dict:
    """A texture run's dataset settings, schema defaults filled, at test size."""
    dataset = {"crop_sizes": [64, 96], "cell": CELL, "count": 200, "min_count": 1, **overrides}
    config = {
        "corpus": {"collections": {"c": {"path": "x", "artist": "A", "licence": "L",
                                         "consent": True}}},
        "texture": {"runs": {"t": {"collections": ["c"], "dataset": dataset}}},
    }  # fmt: skip
    validate_config(config, REPO / "config" / "schema.yaml")
    return config["texture"]["runs"]["t"]["dataset"]


def corpus(tmp_path, images: dict[str, np.ndarray], masks: dict | None = None):
    """Write scans (and masks beside them), normalise them the workflow's way."""
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    for name, mask in (masks or {}).items():
        Image.fromarray(mask).save(folder / f"{name}.mask.png")
    out = tmp_path / "corpus"
    normalise_collection("c", folder, out / "images", out / "manifest.tsv",
                         out / "report.json", 10**8)  # fmt: skip
    return texture_sources([str(out / "manifest.tsv")])


def boxes(crops) -> np.ndarray:
    return np.array([crop.box for crop in crops])


def test_crops_come_from_the_hatched_half(tmp_path):
    ink = np.zeros((192, 384), np.float32)
    ink[:, :192] = hatch(192, 192, 30)
    sources = corpus(tmp_path, {"half": scan(ink)})
    crops, report = select_crops(sources, settings(), seed=0)
    assert len(crops) >= 3 and report[0]["candidates"] == len(crops)
    centres = (boxes(crops)[:, 0] + boxes(crops)[:, 2]) / 2
    assert (centres < 192).all()
    assert {crop.primitive for crop in crops} == {"hatch"}


@pytest.mark.parametrize("mode", ["restrict", "weight", "ignore"])
def test_artist_masks_are_obeyed(tmp_path, mode):
    mask = np.zeros((192, 384), np.uint8)
    mask[:, :160] = 255  # the artist allows only the left part
    sources = corpus(tmp_path, {"all": scan(hatch(192, 384, 60))}, {"all": mask})
    assert sources[0].mask.endswith("all.mask.png")
    crops, _ = select_crops(sources, settings(mask_mode=mode), seed=0)
    right = boxes(crops)  # x0, y0, x1, y1
    assert len(crops) >= 2
    if mode == "restrict":
        assert (right[:, 2] <= 160).all()  # wholly inside the white part
    elif mode == "weight":
        assert (right[:, 0] < 160).all()  # never wholly in the black part
        assert (right[:, 2] <= 160).any()
    else:
        assert (right[:, 0] >= 160).any()


def test_unreadable_mask_is_named_before_any_work(tmp_path):
    sources = corpus(tmp_path, {"a": scan(hatch(128, 128, 10)), "b": scan(hatch(128, 128, 80))})
    (tmp_path / "scans" / "b.mask.png").write_bytes(b"not an image")
    sources = texture_sources([str(tmp_path / "corpus" / "manifest.tsv")])
    with pytest.raises(
        InputImageError,
        match=r"(?s)1 artist mask\(s\) cannot be read.*b\.mask\.png: not a readable",
    ):
        write_crops("t", sources, settings(), str(tmp_path / "crops"), str(tmp_path / "c.json"))
    assert not (tmp_path / "crops").exists()
    write_crops("t", sources, settings(mask_mode="ignore"), str(tmp_path / "crops"),
                str(tmp_path / "c.json"))  # fmt: skip


def overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min(a[2] - a[0], b[2] - b[0]) ** 2
    return max(w, 0) * max(h, 0) / smaller


@pytest.mark.parametrize("bound", [0.0, 0.25, 0.5])
def test_no_two_crops_overlap_more_than_the_bound(tmp_path, bound):
    sources = corpus(tmp_path, {"a": scan(cross_hatch(256, 320, 20, 70)),
                                "b": scan(hatch(224, 224, 100))})  # fmt: skip
    crops, _ = select_crops(sources, settings(max_overlap=bound), seed=0)
    assert len(crops) >= 8
    for a, b in itertools.combinations(crops, 2):
        if a.source_id == b.source_id:
            assert overlap(a.box, b.box) <= bound + 1e-9, (a.id, b.id)
    if bound == 0.0:
        assert any(overlap(a.box, b.box) == 0 and a.source_id == b.source_id
                   for a, b in itertools.combinations(crops, 2))  # fmt: skip


def test_more_overlap_allowed_gives_more_crops(tmp_path):
    sources = corpus(tmp_path, {"a": scan(hatch(256, 256, 45))})
    counts = [len(select_crops(sources, settings(max_overlap=b), 0)[0]) for b in (0, 0.5)]
    assert counts[0] < counts[1]


def test_same_seed_same_crops_another_seed_others(tmp_path):
    sources = corpus(
        tmp_path, {"a": scan(hatch(320, 320, 15)), "b": scan(grain(256, 256, 1, "stipple"))}
    )
    chosen = settings(count=6)
    first, _ = select_crops(sources, chosen, seed=1)
    again, _ = select_crops(sources, chosen, seed=1)
    other, _ = select_crops(sources, chosen, seed=2)
    assert first == again and len(first) == 6
    assert [c.id for c in first] != [c.id for c in other]


def test_class_shares_split_the_count(tmp_path):
    sources = corpus(tmp_path, {"h": scan(hatch(256, 256, 45)),
                                "g": scan(grain(256, 256, 0, "stipple"))})  # fmt: skip
    crops, _ = select_crops(sources, settings(count=4), seed=0)
    assert sorted(c.primitive for c in crops) == ["grain", "grain", "hatch", "hatch"]
    only_grain = settings(count=4, classes={"hatch": 0, "cross-hatch": 0, "stroke": 0})
    crops, _ = select_crops(sources, only_grain, seed=0)
    assert {c.primitive for c in crops} == {"grain"} and len(crops) == 4


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ({"hatch": 9, "cross-hatch": 9, "grain": 9, "stroke": 9}, [3, 3, 3, 3]),
        ({"hatch": 9, "cross-hatch": 1, "grain": 0, "stroke": 9}, [6, 1, 0, 5]),
        ({"hatch": 2, "cross-hatch": 1, "grain": 0, "stroke": 1}, [2, 1, 0, 1]),
        ({"hatch": 0, "cross-hatch": 0, "grain": 0, "stroke": 0}, [0, 0, 0, 0]),
    ],
)
def test_quota_of_a_short_class_goes_to_the_others(available, expected):
    shares = dict.fromkeys(PRIMITIVES, 0.25)
    quota = class_quotas(12, shares, available)
    assert [quota[p] for p in PRIMITIVES] == expected
    assert sum(quota.values()) == min(12, sum(available.values()))


def test_small_sources_get_the_sizes_that_fit_or_are_skipped(tmp_path, caplog):
    sources = corpus(tmp_path, {"big": scan(hatch(224, 224, 0)),
                                "mid": scan(hatch(80, 200, 90)),
                                "tiny": scan(hatch(48, 300, 45))})  # fmt: skip
    by_name = {s.source.rsplit("/", 1)[-1]: s.id for s in sources}
    with caplog.at_level(logging.INFO):
        crops, report = select_crops(sources, settings(), seed=0)
    assert "tiny.png (300x48) is smaller than the smallest crop (64 px): skipped" in caplog.text
    skipped = {entry["id"] for entry in report if "skipped" in entry}
    assert skipped == {by_name["tiny.png"]}
    mid = [c for c in crops if c.source_id == by_name["mid.png"]]
    assert mid and {c.size for c in mid} == {64}  # 96 does not fit its 80 px side
    assert {c.size for c in crops if c.source_id == by_name["big.png"]} == {64, 96}
    with pytest.raises(ConfigError, match=r"only 0 texture crops found in 1 sources"):
        write_crops("t", [s for s in sources if s.id in skipped], settings(min_count=1),
                    str(tmp_path / "crops"), str(tmp_path / "crops.json"))  # fmt: skip


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"texture\.runs\.t\.dataset\.crop_sizes \[80\]"):
        check_runs(_config(crop_sizes=[64, 80], cell=32))
    with pytest.raises(ConfigError, match=r"texture\.runs\.t\.collections: 'nope'"):
        check_runs(_config(collections=["nope"]))
    with pytest.raises(ConfigError, match=r"datasets\.texture-t and texture run 't'"):
        check_runs(_config(datasets={"texture-t": {"collections": ["c"]}}))
    with pytest.raises(ConfigError, match=r"classes: every share is 0"):
        check_runs(_config(classes=dict.fromkeys(PRIMITIVES, 0)))


def _config(collections=("c",), datasets=None, **dataset) -> dict:
    config = {
        "corpus": {"collections": {"c": {"path": "x", "artist": "A", "licence": "L",
                                         "consent": True}}},
        "datasets": datasets or {},
        "texture": {"runs": {"t": {"collections": list(collections), "dataset": dataset}}},
    }  # fmt: skip
    return validate_config(config, REPO / "config" / "schema.yaml")


# --- captions, dataset, review sheet ------------------------------------------------------

CAPTIONS = {"captioner": "embedded", "vllm": {}}
PROMPT = (REPO / "resources/captions/texture_system_prompt.md",
          REPO / "resources/captions/texture_examples.yaml")  # fmt: skip


def test_crops_captions_edits_dataset_and_sheet(tmp_path):
    sources = corpus(tmp_path, {"h": warm_scan(hatch(192, 192, 90)),
                                "x": warm_scan(cross_hatch(192, 192, 0, 90)),
                                "g": scan(grain(192, 192, 4, "stipple"))})  # fmt: skip
    plan_path, crops_dir = tmp_path / "crops.json", tmp_path / "crops"
    chosen = settings(crop_sizes=[96], count=6, validation_fraction=0.0)
    plan = write_crops("t", sources, chosen, str(crops_dir), str(plan_path))
    assert plan["counts"] == {"hatch": 2, "cross-hatch": 2, "grain": 2, "stroke": 0}
    folder, index_path = tmp_path / "captions", tmp_path / "captions" / "index.json"
    index = caption_crops(str(plan_path), str(folder), str(index_path), CAPTIONS, *PROMPT)
    by_class = {crop["primitive"]: index[crop["id"]]["caption"] for crop in plan["crops"]}
    assert by_class["hatch"].endswith("ink hatching, vertical parallel strokes, on warm paper")
    assert by_class["cross-hatch"].endswith("ink cross-hatching on warm paper")
    assert by_class["grain"].endswith("ink stippling and grain on white paper")
    assert {entry["status"] for entry in index.values()} == {"generated"}

    edited = plan["crops"][0]["id"]
    (folder / f"{edited}.txt").write_text("my own words: bristly vertical hatching\n")
    again = caption_crops(str(plan_path), str(folder), str(index_path), CAPTIONS, *PROMPT)
    assert again[edited]["status"] == "edited"
    assert (folder / f"{edited}.txt").read_text() == "my own words: bristly vertical hatching\n"
    assert {e["status"] for i, e in again.items() if i != edited} == {"current"}

    dataset = tmp_path / "datasets" / "texture-t"
    summary = build_texture_dataset("texture-t", str(plan_path), str(index_path), str(dataset))
    assert summary["counts"]["train"] == {"hatch": 2, "cross-hatch": 2, "grain": 2}
    assert sorted(s["id"] for s in summary["sources"]) == sorted(s.id for s in sources)
    metadata = (dataset / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in metadata]
    assert {row["file_name"].rsplit("/", 1)[0] for row in rows} == {"96/96x96"}
    edited_row = next(row for row in rows if row["file_name"].endswith(f"{edited}.png"))
    assert edited_row["text"] == "my own words: bristly vertical hatching"
    assert (dataset / "train" / edited_row["file_name"]).with_suffix(".txt").read_text() == (
        "my own words: bristly vertical hatching\n"
    )
    pixels = np.asarray(Image.open(dataset / "train" / edited_row["file_name"]))
    x0, y0, x1, y1 = edited_row["box"]
    source = next(s for s in sources if s.id == edited_row["source_id"])
    assert np.array_equal(pixels, np.asarray(Image.open(source.image))[y0:y1, x0:x1])
    images = read_split(dataset / "train")  # the Flux trainer's reader accepts the set
    assert len(images) == 6 and {image.bucket for image in images} == {(96, 96)}

    sheet = tmp_path / "review.html"
    write_texture_review_sheet("t", str(plan_path), str(index_path), str(sheet))
    page = sheet.read_text()
    assert page.count("<figure>") == 6 and page.count("data:image/jpeg;base64,") == 6
    assert "2 hatch" in page and "my own words" in page and 'class="tag edited"' in page
    assert str(read_json(plan_path)["sources"][0]["source"]) in page


def test_strips_measure_exactly_what_one_pass_does(monkeypatch):
    from blkassist.texture import measure

    luma = scan(np.maximum(hatch(200, 168, 35), grain(200, 168, 2, "stipple")))
    whole = cell_grid(luma, CELL)
    monkeypatch.setattr(measure, "STRIP_PIXELS", CELL * 2)  # many strips, many seams
    strips = cell_grid(luma, CELL)
    assert whole.shape == strips.shape == (200 // CELL, 168 // CELL)
    np.testing.assert_allclose(strips.tensor, whole.tensor, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(strips.histogram, whole.histogram, rtol=1e-5, atol=1e-9)
