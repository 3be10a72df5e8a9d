"""`snakemake --report report.zip` on a small demo-like workflow: every part's human-facing
outputs are in the report, each with its caption."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import (
    REPO,
    run_snakemake,
    save_tiny_rrdbnet,
    synthetic_corpus,
    textured,
    write_config,
)

pytestmark = pytest.mark.slow

RECIPE = {"steps": 2, "save_every": 1, "quantize": False, "gradient_checkpointing": False,
          "sample_size": [64, 64], "sample_steps": 1, "sample_seeds": [0], "sample_count": 1,
          "max_sequence_length": 32, "validation_images": 1}  # fmt: skip


def demo_like_config(workdir: Path) -> Path:
    weights = save_tiny_rrdbnet(workdir / "tiny.pth")
    Image.fromarray(textured(96, 128, seed=2)).save(workdir / "art.png")
    config = {
        "corpus": synthetic_corpus(3, 1, 256),
        "datasets": {"small": {"collections": ["ink"], "resolutions": [128],
                               "validation_fraction": 0.25}},
        "esrgan": {"r": {"collections": ["ink"], "init": str(weights), "gt_size": 80,
                         "batch_size": 1, "iterations": 2, "checkpoint_every": 2,
                         "validate_every": 1, "validation_crops": 1, "loss": {"perceptual": 0}}},
        "conceptor": {
            "model": "resources/flux/tiny.yaml",  # the random tiny Flux: speed, not learning
            "runs": {"ink": {"dataset": "small", "recipe": RECIPE}},
            "concepts": {"towers": {"run": "ink", "prompts": ["two towers"], "seeds": [0, 1],
                                    "megapixels": 0.01, "steps": 1, "max_sequence_length": 32}},
        },
        "murals": {"m": {"source": "art.png", "model": "lanczos", "tile": 64}},
    }  # fmt: skip
    return write_config(workdir, config)


# (category, file in the workflow, words of its caption)
EXPECTED = [
    ("Captions", "results/captions/ink_review.html", "Caption review sheet"),
    ("Datasets", "results/datasets/small_summary.html", "Training set"),
    ("Real-ESRGAN", "results/esrgan/r/validation.png", "PSNR, SSIM and sharpness"),
    ("Real-ESRGAN", "results/esrgan/r/losses.png", "each training loss term"),
    ("Real-ESRGAN", "results/esrgan/r/validation.html", "validation metrics as a table"),
    ("BLK-Conceptor", "results/conceptor/ink/losses.png", "training loss per step"),
    ("BLK-Conceptor", "results/conceptor/ink/validation.html", "held-out flow-matching loss"),
    ("BLK-Conceptor", "results/concepts/towers/contact_sheet.png", "one row per prompt"),
    ("Murals", "results/view/m/thumbnail.png", "downscaled to 1024 pixels"),
    ("Murals", "results/view/m/provenance.html", "Provenance of mural"),
]


def test_report_holds_every_review_output_with_its_caption(tmp_path):
    if not (REPO / "viewer/node_modules/openseadragon").is_dir():
        pytest.skip("OpenSeadragon is not installed for the viewer: run `make viewer-deps`")
    config = demo_like_config(tmp_path)
    run_snakemake(tmp_path, [config])  # the default target: everything
    run_snakemake(tmp_path, [config], "--report", "report.zip")

    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        page = archive.read("report/report.html").decode()
        results, categories = report_variable(page, "results"), report_variable(page, "categories")
        for category, path, caption in EXPECTED:
            entry = results[path]
            assert caption in entry["caption"], f"caption of {path}: {entry['caption']}"
            assert "{{" not in entry["caption"]  # the template was rendered
            assert any(path in files for files in categories[category].values()), path
            # the report carries the workflow's file, byte for byte
            stored = archive.read("report/" + entry["data_uri"])
            assert stored == (tmp_path / path).read_bytes(), path


def report_variable(page: str, name: str):
    """A JSON value that the report page assigns to `var NAME`."""
    start = page.index(f"var {name} = {{") + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(page, start)[0]
