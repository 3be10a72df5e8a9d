"""`snakemake --report report.zip` on the demo's folder (the whole chain, run once per
session): every part's human-facing outputs are in the report, each with its caption."""

from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow

DEMO_CONFIG = REPO / "config" / "config.yaml"


def expected(demo: dict) -> list[tuple[str, str, str]]:
    """(category, output, words of its caption) for each part the demo runs, named as the
    demo's config names its collection, training set, runs, concepts and mural."""

    def first(section: dict) -> str:
        return next(iter(section))

    collection, dataset = first(demo["corpus"]["collections"]), first(demo["datasets"])
    esrgan, conceptor = first(demo["esrgan"]), first(demo["conceptor"]["runs"])
    concept, mural = first(demo["conceptor"]["concepts"]), first(demo["murals"])
    return [
        ("Captions", f"results/captions/{collection}_review.html", "Caption review sheet"),
        ("Datasets", f"results/datasets/{dataset}_summary.html", "Training set"),
        ("Real-ESRGAN", f"results/esrgan/{esrgan}/validation.png", "PSNR, SSIM and sharpness"),
        ("Real-ESRGAN", f"results/esrgan/{esrgan}/losses.png", "each training loss term"),
        ("Real-ESRGAN", f"results/esrgan/{esrgan}/validation.html",
         "validation metrics as a table"),
        ("BLK-Conceptor", f"results/conceptor/{conceptor}/losses.png", "training loss per step"),
        ("BLK-Conceptor", f"results/conceptor/{conceptor}/validation.html",
         "held-out flow-matching loss"),
        ("BLK-Conceptor", f"results/concepts/{concept}/contact_sheet.png", "one row per prompt"),
        ("Murals", f"results/view/{mural}/thumbnail.png", "downscaled to 1024 pixels"),
        ("Murals", f"results/view/{mural}/provenance.html", "Provenance of mural"),
    ]  # fmt: skip


def test_report_holds_every_review_output_with_its_caption(demo_run, tmp_path):
    if not (REPO / "viewer/node_modules/openseadragon").is_dir():
        pytest.skip("OpenSeadragon is not installed for the viewer: run `make viewer-deps`")
    # The report is written outside the demo's folder, which tests only read.
    run_snakemake(demo_run, [DEMO_CONFIG], "--report", str(tmp_path / "report.zip"))

    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        page = archive.read("report/report.html").decode()
        results, categories = report_variable(page, "results"), report_variable(page, "categories")
        for category, path, caption in expected(yaml.safe_load(DEMO_CONFIG.read_text())):
            entry = results[path]
            assert caption in entry["caption"], f"caption of {path}: {entry['caption']}"
            assert "{{" not in entry["caption"]  # the template was rendered
            assert any(path in files for files in categories[category].values()), path
            stored = archive.read("report/" + entry["data_uri"])
            assert stored == (demo_run / path).read_bytes(), path


def report_variable(page: str, name: str):
    """A JSON value that the report page assigns to `var NAME`."""
    start = page.index(f"var {name} = {{") + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(page, start)[0]
