"""Synthetic corpus -> texture crops -> captions -> datasets/texture-RUN and its review
sheet, through the real Snakemake engine; a rerun does nothing; an edit rebuilds the set."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import run_snakemake, synthetic_corpus, write_config

pytestmark = pytest.mark.slow

CONFIG = {
    "corpus": synthetic_corpus(compositions=3, details=1, long_side=384),
    "texture": {"runs": {"t": {"collections": ["ink"], "dataset": {
        "crop_sizes": [64, 96], "cell": 16, "count": 12, "min_count": 4,
        "validation_fraction": 0.0}}}},
}  # fmt: skip
TARGETS = ("datasets/texture-t", "results/texture/t/review.html")


def test_texture_dataset_workflow_reruns_nothing_and_keeps_edits(tmp_path):
    config = write_config(tmp_path, CONFIG)
    run_snakemake(tmp_path, [config], *TARGETS)
    dataset = tmp_path / "datasets" / "texture-t"
    summary = json.loads((dataset / "dataset.json").read_text())
    rows = [
        json.loads(line) for line in (dataset / "train/metadata.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 == sum(summary["counts"]["train"].values())
    assert len(summary["sources"]) == 4
    for row in rows:
        size = row["resolution"]
        assert row["file_name"].startswith(f"{size}/{size}x{size}/") and size in (64, 96)
        assert (dataset / "train" / row["file_name"]).is_file()
        assert (dataset / "train" / row["file_name"]).with_suffix(".txt").read_text().strip()
    sheet = (tmp_path / "results/texture/t/review.html").read_text()
    assert sheet.count("<figure>") == 12

    again = run_snakemake(tmp_path, [config], *TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr
    # Settings that check or schedule, not define, the set redo nothing either.
    knobs = json.loads(json.dumps(CONFIG))
    knobs["texture"]["runs"]["t"]["dataset"]["min_count"] = 2
    knobs["captions"] = {"vllm": {"concurrency": 9, "timeout_s": 30}}
    same = run_snakemake(tmp_path, [write_config(tmp_path, knobs, "knobs.yaml")], *TARGETS)
    assert "Nothing to be done" in same.stdout + same.stderr

    edited = rows[0]["file_name"].rsplit("/", 1)[-1].removesuffix(".png")
    sidecar = tmp_path / "captions" / "texture-t" / f"{edited}.txt"
    sidecar.write_text("hand-written: loose diagonal hatching, bristly edges\n")
    rebuilt = run_snakemake(tmp_path, [config], *TARGETS)
    log = rebuilt.stdout + rebuilt.stderr
    assert "build_texture_dataset" in log
    assert "select_texture_crops" not in log
    texts = {
        json.loads(line)["file_name"]: json.loads(line)["text"]
        for line in (dataset / "train/metadata.jsonl").read_text().splitlines()
    }
    assert texts[rows[0]["file_name"]] == "hand-written: loose diagonal hatching, bristly edges"
    assert sidecar.read_text().startswith("hand-written")
    sheet = (tmp_path / "results/texture/t/review.html").read_text()
    assert "hand-written: loose diagonal hatching" in sheet

    # The artist masks out a scan that gave crops: adding the mask re-selects without it.
    plan = json.loads((tmp_path / "work/texture/t/crops.json").read_text())
    used = {crop["source_id"] for crop in plan["crops"]}
    masked = next(source for source in plan["sources"] if source["id"] in used)
    scan = tmp_path / masked["source"]
    Image.new("L", Image.open(scan).size, 0).save(scan.with_name(f"{scan.stem}.mask.png"))
    reselected = run_snakemake(tmp_path, [config], *TARGETS)
    assert "select_texture_crops" in reselected.stdout + reselected.stderr
    plan = json.loads((tmp_path / "work/texture/t/crops.json").read_text())
    assert masked["id"] not in {crop["source_id"] for crop in plan["crops"]}
    assert sidecar.read_text().startswith("hand-written")  # the edit outlives re-selection
