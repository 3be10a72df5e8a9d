"""The real Snakemake engine on real files: demo, resume after SIGKILL, bad input, planning."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import yaml
from PIL import Image

from tests.conftest import (
    REPO,
    kill_mid_batch,
    run_snakemake,
    save_tiny_rrdbnet,
    textured,
    write_config,
)

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_demo_default_target_is_the_whole_chain_then_has_nothing_to_do(demo_run):
    """What `make demo` runs: rule all, with the mural made by the demo's own fine-tune."""
    config = REPO / "config" / "config.yaml"
    tmp_path = demo_run
    final = tmp_path / "results" / "mural_final.tif"
    demo = yaml.safe_load(config.read_text())
    with tifffile.TiffFile(final) as tif:
        assert tif.pages[0].shape == (
            demo["demo_artwork"]["height"] * 4,
            demo["demo_artwork"]["width"] * 4,
            3,
        )
    provenance = json.loads((tmp_path / "results" / "mural_final.provenance.json").read_text())
    assert provenance["result"]["sha256"] == sha256(final)
    assert provenance["model"]["name"] == "esrgan:demo"
    assert provenance["model"]["weights"]["sha256"] == sha256(
        tmp_path / "work" / "models" / "esrgan-demo.pth"
    )
    assert provenance["source"]["sha256"] == sha256(tmp_path / demo["demo_artwork"]["path"])
    assert {"torch", "libvips", "zarr", "blkassist"} <= set(provenance["versions"])
    (terms,) = provenance["licences"]  # the demo's fine-tune of Real-ESRGAN x4plus
    assert terms["derived_from"][0]["licence"].startswith("BSD-3-Clause")
    for made in ("results/esrgan/demo/model_card.json", "results/conceptor/demo/model_card.json",
                 "results/captions/demo_review.html", "datasets/conceptor",
                 "work/models/conceptor-demo.kohya.safetensors"):  # fmt: skip
        assert (tmp_path / made).exists(), made
    # The demo's diffusion mural shows a re-roll: two windows of its last pass sampled
    # again from a new noise generation, recorded in its provenance, with a before/after
    # toggle in its viewer.
    flux = json.loads((tmp_path / "results/mural_flux_final.provenance.json").read_text())
    last = flux["refinement"]["passes"][-1]
    assert [w["window"] for w in last["reroll"]["windows"]] == [21, 27]
    assert all(w["noise"]["generation"] == 1 and w["noise"]["kind"] == "reroll"
               for w in last["reroll"]["windows"])  # fmt: skip
    assert "Before the re-roll" in (tmp_path / "results/view/mural_flux/index.html").read_text()
    again = run_snakemake(tmp_path, [config])
    assert "Nothing to be done" in again.stdout + again.stderr


def resume_config(tmp_path: Path, weights: Path) -> Path:
    Image.fromarray(textured(256, 384)).save(tmp_path / "art.png")  # 24 tiles, 3 batches
    config = {
        "murals": {
            "m": {
                "source": "art.png",
                "model": str(weights),
                "tile": 64,
                "pad": 24,
                "tiles_per_job": 8,
                "scale": 4,
            }
        }
    }
    return write_config(tmp_path, config)


FINAL = "results/m_final.tif"


def test_sigkill_mid_upscale_then_rebatch_keeps_tiles_and_finishes_identically(tmp_path):
    weights = tmp_path / "slowish.pth"
    save_tiny_rrdbnet(weights, num_block=4, num_feat=32)  # ~0.15 s a tile
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference_dir, killed_dir):
        folder.mkdir()
    # The mural alone: its viewer's jobs add nothing to what a resume is tested for.
    run_snakemake(reference_dir, [resume_config(reference_dir, weights)], FINAL)

    config = resume_config(killed_dir, weights)
    done_before = kill_mid_batch(
        killed_dir,
        [config],
        progress=killed_dir / "work/m/canvas1.progress",
        markers=killed_dir / "work/m/pass1",
        batch=8,
        timeout=300,
        targets=(FINAL,),
    )
    assert done_before, "never caught a batch halfway"
    assert not (killed_dir / "results" / "m_final.tif").exists()

    rebatched = yaml.safe_load(config.read_text())
    rebatched["murals"]["m"]["tiles_per_job"] = 5  # 24 tiles: ranges no longer line up
    config = write_config(killed_dir, rebatched)
    run_snakemake(killed_dir, [config], FINAL)
    markers = [json.loads(p.read_text()) for p in (killed_dir / "work/m/pass1").glob("*.done")]
    new = [m for m in markers if m["stop"] - m["first"] != 8]  # the new batching's
    assert sum(m["skipped"] for m in new) >= len(done_before)  # finished tiles were not redone
    assert sha256(killed_dir / "results/m_final.tif") == sha256(
        reference_dir / "results/m_final.tif"
    )
    again = run_snakemake(killed_dir, [config], FINAL)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_scheduling_knobs_redo_nothing_and_compression_reruns_only_assembly(tmp_path):
    Image.fromarray(textured(70, 90)).save(tmp_path / "art.png")
    mural = {"source": "art.png", "model": "lanczos", "tile": 32, "tiles_per_job": 2}
    config = write_config(tmp_path, {"murals": {"m": mural}})
    run_snakemake(tmp_path, [config])
    final = tmp_path / "results/m_final.tif"
    before = sha256(final)
    # Each batch's log says how much of its pass is done, and at what speed.
    lines = [
        line
        for log in sorted((tmp_path / "logs/m/pass1").glob("tiles-*.log"))
        for line in log.read_text().splitlines()
        if "tiles done" in line
    ]
    assert len(lines) == 5
    done = [int(re.search(r"pass 1 \(x4\): (\d)/9 tiles done", line)[1]) for line in lines]
    assert max(done) == 9 and min(done) >= 1
    assert all(re.search(r"this batch [12] in [\d.]+ s \([\d.]+ s/tile\), ETA", x) for x in lines)
    for knob, value in [("tiles_per_job", 5), ("tiles_per_forward", 3)]:
        mural[knob] = value
        config = write_config(tmp_path, {"murals": {"m": mural}, "gpu": {"lock_dir": "locks"}})
        dry = run_snakemake(tmp_path, [config], "-n")
        assert "Nothing to be done" in dry.stdout + dry.stderr, knob
    mural["compression"] = "lzw"
    config = write_config(tmp_path, {"murals": {"m": mural}})
    counts = job_counts(run_snakemake(tmp_path, [config], "-n").stdout)
    assert counts["assemble_mural"] == 1
    assert not {"ingest_source", "allocate_canvas", "check_mural"} & set(counts)
    mural["pad"] = 8  # defines pixels: the pass is redone
    config = write_config(tmp_path, {"murals": {"m": mural}})
    counts = job_counts(run_snakemake(tmp_path, [config], "-n").stdout)
    assert counts["allocate_canvas"] == 1 and counts["upscale_tile_batch"] == 2
    assert sha256(final) == before


def test_canvases_are_outputs_that_temporary_removes_once_used(tmp_path):
    Image.fromarray(textured(50, 70)).save(tmp_path / "art.png")
    mural = {"source": "art.png", "model": "lanczos", "scale": 8, "tile": 32}
    kept = write_config(tmp_path, {"murals": {"m": mural}}, "kept.yaml")
    temporary = write_config(
        tmp_path, {"murals": {"m": mural}, "canvases": {"temporary": True}}, "temp.yaml"
    )
    canvases = sorted(f"canvas{k}.zarr" for k in range(3))  # two passes: 4x then 2x
    run_snakemake(tmp_path, [kept])
    assert sorted(p.name for p in (tmp_path / "work/m").glob("canvas*.zarr")) == canvases
    run_snakemake(tmp_path, [temporary], "--delete-temp-output")
    assert not list((tmp_path / "work/m").glob("canvas*.zarr"))

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(tmp_path / "art.png", fresh)
    run_snakemake(fresh, [temporary])
    assert not list((fresh / "work/m").glob("canvas*.zarr"))  # each removed once used
    image = pyvips.Image.new_from_file(str(fresh / "results/m_final.tif"))
    assert (image.width, image.height) == (560, 400)
    again = run_snakemake(fresh, [temporary])
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_inputs_fail_by_name_and_good_murals_still_finish(tmp_path):
    Image.fromarray(textured(60, 80)).save(tmp_path / "good.png")
    good = {"good": {"source": "good.png", "model": "lanczos", "tile": 32}}
    limits = {"max_source_pixels": 100_000}
    first = write_config(tmp_path, {"limits": limits, "murals": good}, "good.yaml")
    run_snakemake(tmp_path, [first])
    finished = tmp_path / "results" / "good_final.tif"
    before = (sha256(finished), finished.stat().st_mtime_ns)

    Image.fromarray(textured(300, 300)).save(tmp_path / "full.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:3000])
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("not an image\n" * 10)
    tifffile.imwrite(tmp_path / "huge.tif", np.zeros((400, 400, 3), np.uint8))
    bad = {
        name: {"source": source, "model": "lanczos", "tile": 32}
        for name, source in [
            ("truncated", "truncated.jpg"),
            ("empty", "empty.tif"),
            ("text", "notes.tif"),
            ("huge", "huge.tif"),
            ("missing", "missing.tif"),
        ]
    }
    everything = write_config(tmp_path, {"limits": limits, "murals": {**good, **bad}})
    result = run_snakemake(tmp_path, [everything], "--keep-going", check=False)
    assert result.returncode != 0
    messages = result.stdout + result.stderr
    assert "truncated.jpg: image data is damaged or truncated" in messages
    assert "empty.tif: file is empty" in messages
    assert "notes.tif: not a readable image" in messages
    assert "huge.tif: header claims 400x400 = 160,000 pixels" in messages
    assert "raise limits.max_source_pixels" in messages
    assert "missing.tif: file not found" in messages
    assert (sha256(finished), finished.stat().st_mtime_ns) == before
    for name in bad:
        assert not (tmp_path / "results" / f"{name}_final.tif").exists()
        assert not (tmp_path / "work" / name / "canvas0.zarr").exists()  # no heavy work


@pytest.mark.parametrize(
    ("mural", "expected"),
    [
        (
            {"source": "a.png", "tille": 64},
            r"murals\.m: Additional properties are not allowed "
            r"\('tille' was unexpected\)",
        ),
        ({"source": "a.png", "tile": "big"}, r"murals\.m\.tile: 'big' is not of type 'integer'"),
        ({"source": "a.png", "model": "esrgan"}, r"murals\.m\.model: 'esrgan' is not valid"),
        ({"source": "a.png", "scale": 4, "target_long_side": 900}, r"murals\.m: give either"),
        ({"tile": 64}, r"murals\.m: 'source' is a required property"),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(tmp_path, mural, expected):
    config = write_config(tmp_path, {"murals": {"m": mural}})
    result = run_snakemake(tmp_path, [config], "-n", check=False)
    assert result.returncode != 0
    assert re.search(expected, result.stdout + result.stderr)


def test_second_configfile_adds_a_mural(tmp_path):
    for name in ("a", "b"):
        Image.fromarray(textured(40, 50, seed=ord(name))).save(tmp_path / f"{name}.png")
    base = write_config(
        tmp_path, {"murals": {"a": {"source": "a.png", "model": "lanczos"}}}, "base.yaml"
    )
    extra = write_config(
        tmp_path, {"murals": {"b": {"source": "b.png", "model": "lanczos"}}}, "extra.yaml"
    )
    run_snakemake(tmp_path, [base, extra])
    assert (tmp_path / "results/a_final.tif").exists()
    assert (tmp_path / "results/b_final.tif").exists()


def test_rgba_mural_with_target_size_runs_two_passes(tmp_path):
    rgba = textured(40, 60, bands=4)
    rgba[:8, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    config = write_config(
        tmp_path,
        {
            "murals": {
                "cut": {
                    "source": "cutout.png",
                    "model": "lanczos",
                    "target_long_side": 500,
                    "tile": 32,
                    "tiles_per_job": 8,
                }
            }
        },
    )
    run_snakemake(tmp_path, [config])
    assert (tmp_path / "work/cut/pass2").is_dir()
    image = pyvips.Image.new_from_file(str(tmp_path / "results/cut_final.tif"))
    assert (image.width, image.height, image.bands) == (500, 333, 4)
    assert image.crop(0, 0, 500, 40).numpy()[..., 3].max() == 0  # transparent band kept


def test_production_dry_run_lists_every_tile_batch(tmp_path):
    source = tmp_path / "scans" / "mural_master.tif"
    source.parent.mkdir()
    pyvips.Image.black(16000, 12000, bands=3).write_to_file(
        str(source), tile=True, compression="deflate"
    )
    production = yaml.safe_load((REPO / "config" / "production.yaml").read_text())
    production["murals"]["mural"]["source"] = str(source)
    config = write_config(tmp_path, production)
    started = time.monotonic()
    result = run_snakemake(
        tmp_path, [config], "results/mural_final.tif", "-n", "--resources", "gpu=4"
    )
    elapsed = time.monotonic() - started
    counts = job_counts(result.stdout)
    assert counts["upscale_tile_batch"] == 48
    assert counts["assemble_mural"] == 1
    assert "work/mural/pass1/tiles-752-767.done" in result.stdout
    assert "mural mural: 64000x48000 (3.07 Gpx), 1 pass(es), 768 tiles in 48 jobs" in result.stdout
    print(f"production dry-run: {elapsed:.1f} s")


def test_workflow_is_lint_and_format_clean():
    venv_bin = Path(shutil.which("snakemake") or REPO / ".venv/bin/snakemake").parent
    checks = [
        [str(venv_bin / "snakemake"), "--lint"],
        [str(venv_bin / "snakefmt"), "--check", "Snakefile", "rules"],
        [str(venv_bin / "ruff"), "check", "."],
        [str(venv_bin / "ruff"), "format", "--check", "."],
    ]
    for command in checks:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
