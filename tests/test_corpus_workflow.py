"""Corpus -> captions -> training set through the real Snakemake engine."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_snakemake, write_config

pytestmark = pytest.mark.slow

CONFIG = {
    "corpus": {
        "synthetic": {"path": "corpus/synthetic", "seed": 2, "compositions": 4, "details": 2,
                      "long_side": 384, "high_resolution": 1},
        "collections": {
            "ink": {"path": "corpus/synthetic", "artist": "Test Artist", "licence": "CC0-1.0",
                    "consent": True},
        },
    },
    "datasets": {"sketches": {"collections": ["ink"], "resolutions": [256, 384],
                              "validation_fraction": 0.2}},
}  # fmt: skip


def test_corpus_to_dataset_keeps_artist_edits(tmp_path):
    config = write_config(tmp_path, CONFIG)
    run_snakemake(tmp_path, [config])
    dataset = tmp_path / "datasets" / "sketches"
    summary = json.loads((dataset / "dataset.json").read_text())
    assert len(summary["sources"]) == 6
    assert (tmp_path / "results" / "captions" / "ink_review.html").exists()
    again = run_snakemake(tmp_path, [config])
    assert "Nothing to be done" in again.stdout + again.stderr

    index = json.loads((tmp_path / "captions" / "ink" / "index.json").read_text())
    edited_id, entry = sorted(index.items())[0]
    sidecar = tmp_path / entry["sidecar"]
    sidecar.write_text("hand-written caption: two towers, cross-hatched sky\n")
    rebuilt = run_snakemake(tmp_path, [config])
    assert "build_dataset" in rebuilt.stdout + rebuilt.stderr
    assert "caption_collection" not in rebuilt.stdout + rebuilt.stderr
    texts = [
        json.loads(line)["text"]
        for split in ("train", "validation")
        if (dataset / split / "metadata.jsonl").exists()
        for line in (dataset / split / "metadata.jsonl").read_text().splitlines()
        if json.loads(line)["source_id"] == edited_id
    ]
    assert texts and all("two towers" in t for t in texts)
    assert sidecar.read_text().startswith("hand-written caption")


def test_collection_without_consent_is_refused_and_others_continue(tmp_path):
    config = json.loads(json.dumps(CONFIG))
    config["corpus"]["collections"]["borrowed"] = {
        "path": "corpus/synthetic", "artist": "Someone Else", "licence": "unknown",
        "consent": False,
    }  # fmt: skip
    config["datasets"]["mixed"] = {"collections": ["ink", "borrowed"]}
    path = write_config(tmp_path, config)
    result = run_snakemake(tmp_path, [path], "--keep-going", check=False)
    assert result.returncode != 0
    assert "corpus.collections.borrowed.consent is false" in result.stdout + result.stderr
    assert (tmp_path / "datasets" / "sketches" / "dataset.json").exists()
    assert not (tmp_path / "datasets" / "mixed").exists()
    assert not (tmp_path / "work" / "corpus" / "borrowed" / "images").exists()
