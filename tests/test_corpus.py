"""The corpus: consent, scan discovery, normalisation, duplicates, training sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import Image

from blkassist.corpus.collections import list_scans, require_consent
from blkassist.corpus.datasets import (
    SourceImage,
    aspect_buckets,
    build_dataset,
    mirrored_caption,
    plan_samples,
)
from blkassist.corpus.normalise import normalise_collection, read_manifest
from blkassist.errors import ConfigError, InputImageError
from tests.conftest import textured

DATASET = {"resolutions": [256, 384], "bucket_step": 64, "detail_ratio": 0.25, "flip": True,
           "validation_fraction": 0.25, "seed": 3}  # fmt: skip


def normalise(folder, tmp_path, name="c"):
    out = tmp_path / "out"
    rows = normalise_collection(name, folder, out / "images", out / "manifest.tsv",
                                out / "report.json", 10**8)  # fmt: skip
    return rows, out


def test_collection_without_consent_is_refused():
    with pytest.raises(ConfigError, match=r"corpus\.collections\.sketches\.consent is false"):
        require_consent("sketches", {"path": "x", "artist": "A", "licence": "L", "consent": False})
    require_consent("ok", {"path": "x", "artist": "A", "licence": "L", "consent": True})


def test_scans_are_found_in_nested_folders(tmp_path):
    for rel in [
        "a.png",
        "sub/b.JPG",
        "sub/deeper/c.tif",
        ".hidden/d.png",
        "notes.txt",
        "sub/.e.png",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_scans(tmp_path)]
    assert found == ["a.png", "sub/b.JPG", "sub/deeper/c.tif"]


def test_normalised_manifest_duplicates_and_orientation(tmp_path):
    scans = tmp_path / "scans"
    (scans / "studies").mkdir(parents=True)
    pixels = textured(40, 60)
    Image.fromarray(pixels).save(scans / "studies" / "one.png")
    (scans / "copy.png").write_bytes((scans / "studies" / "one.png").read_bytes())
    # A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(textured(30, 50, seed=2)).save(scans / "sideways.jpg", exif=exif, quality=95)
    rows, out = normalise(scans, tmp_path)
    assert len(rows) == 2  # the copy is used once
    report = json.loads((out / "report.json").read_text())
    assert report["duplicates"] == [
        {"source": str(scans / "studies" / "one.png"), "same_as": str(scans / "copy.png")}
    ]
    by_source = {Path(r.source).name: r for r in read_manifest(out / "manifest.tsv")}
    assert (by_source["sideways.jpg"].width, by_source["sideways.jpg"].height) == (30, 50)
    copy = by_source["copy.png"]
    assert copy.taxonomy == "" and len(copy.id) == 16 and copy.sha256.startswith(copy.id)
    assert np.array_equal(pyvips.Image.new_from_file(copy.image).numpy(), pixels)


def test_bad_scan_is_named_and_good_ones_are_kept(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(textured(40, 60)).save(scans / "good.png")
    (scans / "broken.tif").write_text("not a tiff")
    with pytest.raises(InputImageError, match=r"(?s)1 scan\(s\) cannot be used.*broken\.tif"):
        normalise(scans, tmp_path)
    kept = list((tmp_path / "out" / "images").glob("*.png"))
    assert len(kept) == 1  # the good scan is normalised and kept for the rerun
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def source(image_id, width, height, caption="a study, ink on the left"):
    return SourceImage(image_id, image_id * 4, f"/x/{image_id}.png", width, height, caption)


def test_plan_ratio_buckets_split_and_flips():
    images = [source(f"{i:016x}", 900 + 37 * i, 700 - 13 * i) for i in range(16)]
    samples = plan_samples(images, DATASET, seed=3)
    unflipped = [s for s in samples if not s.flipped]
    detail_share = sum(s.kind == "detail" for s in unflipped) / len(unflipped)
    assert abs(detail_share - 0.25) < 0.03
    for s in samples:
        assert s.bucket[0] % 64 == 0 and s.bucket[1] % 64 == 0
        assert s.bucket[0] * s.bucket[1] <= s.resolution**2
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 and 0 <= y0 < y1
    split = {}
    for s in samples:
        assert split.setdefault(s.source_id, s.split) == s.split  # a source stays in one split
    assert set(split.values()) == {"train", "validation"}
    flips = [s for s in samples if s.flipped]
    assert flips and all(s.split == "train" for s in flips)
    assert all("right" in s.caption for s in flips if s.kind == "full")
    assert plan_samples(images, DATASET, seed=3) == samples  # deterministic


def test_aspect_buckets_cover_the_range():
    buckets = aspect_buckets(1024, 64)
    assert (1024, 1024) in buckets
    ratios = [w / h for w, h in buckets]
    assert min(ratios) < 0.45 and max(ratios) > 2.2


def test_mirrored_caption_swaps_sides():
    assert mirrored_caption("Left hand, right eye; leftover") == "Right hand, left eye; leftover"


def test_built_dataset_layout_pixels_and_captions(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(4):
        Image.fromarray(textured(500, 700, seed=i)).save(scans / f"s{i}.png")
    rows, _ = normalise(scans, tmp_path)
    images = [SourceImage(r.id, r.sha256, r.image, r.width, r.height, f"scan {r.id} left")
              for r in rows]  # fmt: skip
    summary = build_dataset("d", images, DATASET, str(tmp_path / "ds"))
    root = tmp_path / "ds"
    for split in ("train", "validation"):
        lines = (root / split / "metadata.jsonl").read_text().splitlines()
        for entry in map(json.loads, lines):
            png = root / split / entry["file_name"]
            assert Image.open(png).size == tuple(entry["bucket"])
            assert png.with_suffix(".txt").read_text().strip() == entry["text"]
    assert summary["detail_share"] == pytest.approx(0.25, abs=0.05)
    first_flip = next((root / "train").rglob("*-full0-flip.png"))
    original = first_flip.with_name(first_flip.name.replace("-flip", ""))
    assert np.array_equal(np.asarray(Image.open(first_flip))[:, ::-1],
                          np.asarray(Image.open(original)))  # fmt: skip
    assert "right" in first_flip.with_suffix(".txt").read_text()
