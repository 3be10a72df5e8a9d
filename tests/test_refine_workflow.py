"""The diffusion path through the real Snakemake engine with the tiny random Flux and a LoRA
made here: two SR steps each refined, a coherence pass, SIGKILL mid-pass then a re-batched
rerun that keeps every finished window and finishes byte-identically, reruns (and another
re-batching) that do nothing; the 3 Gpx production plan with its GPU memory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pyvips
import torch
import yaml
from PIL import Image

from blkassist.flux.loader import load_flux
from blkassist.refine.sigmas import reference_shift, scheduler_config, shifted
from blkassist.viewer import read_dzi
from tests.conftest import REPO, run_snakemake, snakemake_cmd, textured, write_config
from tests.flux_fixtures import TINY_SPEC

pytestmark = pytest.mark.slow
SHIFT = reference_shift(scheduler_config(TINY_SPEC))["factor"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA of the tiny Flux with random (non-zero) weights, saved as diffusers does."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    components = load_flux(TINY_SPEC)
    torch.manual_seed(3)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    components.transformer.add_adapter(config)
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(components.transformer)
    )
    return folder / "pytorch_lora_weights.safetensors"


def diffusion_config(workdir: Path, lora: Path) -> Path:
    Image.fromarray(textured(20, 24)).save(workdir / "art.png")
    config = {
        "murals": {
            "m": {
                "source": "art.png",
                "scale": 6,  # two SR steps: 3x then 2x
                "model": "lanczos",
                "tile": 32,
                "path": "diffusion",
                "refine": {
                    "model": "resources/flux/tiny.yaml",  # the workflow's own file
                    "lora": str(lora),
                    "tile": 48,  # a 32-px step: two 16-px grid offsets
                    "overlap": 8,
                    "passes": [{"denoise": 0.3}],
                    "coherence": {"denoise": 0.12},
                    "steps": 3,
                    "max_sequence_length": 32,
                    "tiles_per_job": 40,
                    "blocks_per_job": 1,
                },
            }
        }
    }
    return write_config(workdir, config)


def test_diffusion_mural_resumes_after_sigkill_byte_identically(tmp_path, tiny_lora):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    run_snakemake(reference, [diffusion_config(reference, tiny_lora)])

    config = diffusion_config(killed, tiny_lora)
    process = subprocess.Popen(
        snakemake_cmd(killed, [config]),
        cwd=killed,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "BLKASSIST_DEVICE": "cpu"},
    )
    progress = killed / "work/m/refine2.1/windows.progress"  # 16 windows, one job
    deadline, interrupted = time.monotonic() + 600, None
    while time.monotonic() < deadline and interrupted is None and process.poll() is None:
        for record in progress.glob("batch-*.tiles") if progress.is_dir() else []:
            first = record.stem.split("-")[1]
            done = record.read_text().split()
            if 0 < len(done) < 16 and not list(progress.parent.glob(f"tiles-{first}-*.done")):
                interrupted = {int(window) for window in done}
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert interrupted is not None, "never caught a tile job halfway"
    assert not (killed / "results/m_final.tif").exists()

    # Re-batched after the crash: the new jobs keep every window the killed one finished.
    rebatched = yaml.safe_load(config.read_text())
    rebatched["murals"]["m"]["refine"]["tiles_per_job"] = 5
    config = write_config(killed, rebatched)
    run_snakemake(killed, [config])
    markers = [json.loads(m.read_text()) for m in progress.parent.glob("tiles-*-*.done")]
    assert {(m["first"], m["stop"]) for m in markers} == {(0, 5), (5, 10), (10, 15), (15, 16)}
    assert sum(m["skipped"] for m in markers) >= len(interrupted)
    logs = [p.read_text() for p in (killed / "logs/m/refine2.1").glob("tiles-*.log")]
    # The last job to finish says the whole pass is done; one that refined says its speed.
    assert any("refinement pass 2.1: 16/16 windows done (100.0%)" in log for log in logs), logs
    assert any(
        re.search(r"refinement pass 2\.1: \d+/16 windows done \([\d.]+%\); this batch \d+ "
                  r"in [\d.]+ s \([\d.]+ s/window\)", log)
        for log in logs
    ), logs  # fmt: skip
    for name in ("m_final.tif", "m_seams.json", "m_seams.png"):
        assert sha256(killed / "results" / name) == sha256(reference / "results" / name), name
    again = run_snakemake(killed, [config])
    assert "Nothing to be done" in again.stdout + again.stderr
    rebatched["murals"]["m"]["refine"].update(tiles_per_job=7, blocks_per_job=3)
    dry = run_snakemake(killed, [write_config(killed, rebatched, "again.yaml")], "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr  # a finished run stays finished

    provenance = json.loads((killed / "results/m_final.provenance.json").read_text())
    assert provenance["path"]["path"] == "diffusion"
    passes = provenance["refinement"]["passes"]
    assert [p["pass"] for p in passes] == ["1.1", "2.1", "2.2"]
    assert [p["coherence"] for p in passes] == [False, False, True]
    for entry, denoise in zip(passes, (0.3, 0.3, 0.12), strict=True):
        # The paper's denoise: a share of Flux's schedule shifted as at 1024 px.
        assert entry["denoise"] == denoise and entry["model_evaluations"] == 3
        assert entry["start_sigma"] == entry["sigmas"][0] == round(shifted(denoise, SHIFT), 6)
        assert len(entry["sigmas"]) == 4 and entry["sigmas"][-1] == 0
        assert entry["refiner"]["lora"]["sha256"] == sha256(tiny_lora)
        assert entry["refiner"]["flux"]["identity"]
        assert 0 < entry["noise"]["field_seed"] < 2**63 and entry["noise"]["generator"]
        assert entry["settings"]["tile"] == 48 and entry["settings"]["overlap"] == 8
    assert len({entry["noise"]["field_seed"] for entry in passes}) == 3
    assert passes[1]["grid"]["xs"] != passes[2]["grid"]["xs"]  # grids offset per pass
    seams = json.loads((killed / "results/m_seams.json").read_text())
    assert [p["pass"] for p in seams["passes"]] == ["1.1", "2.1", "2.2"]
    assert all(p["worst_at"] and p["worst_score"] >= p["mean_score"] for p in seams["passes"])
    assert all(0 < p["worst_texture"] <= p["texture_ratio"] for p in seams["passes"])
    assert seams["final"]["pass"] == "2.2" and seams["final"]["texture_ratio"] > 0
    final = pyvips.Image.new_from_file(str(killed / "results/m_final.tif"))
    assert (final.width, final.height) == (144, 120)
    # The viewer shows every SR step and refinement pass beside the source and the result,
    # with the seam heatmap over the result.
    page = (killed / "results/view/m/index.html").read_text()
    for layer in ("source", "sr1", "refine1p1", "sr2", "refine2p1", "refine2p2", "final",
                  "seams"):  # fmt: skip
        assert (killed / f"results/view/m/{layer}.dzi").is_file(), layer
        assert f"{layer}_files" in page, layer
    refined = read_dzi(killed / "results/view/m/refine2p2.dzi")
    assert (refined["width"], refined["height"]) == (final.width, final.height)

    # A pixel setting of the coherence pass changed: that pass (and what follows) is redone,
    # from scratch; the earlier passes are not.
    changed = yaml.safe_load(config.read_text())
    changed["murals"]["m"]["refine"]["coherence"]["denoise"] = 0.2
    redo = run_snakemake(killed, [write_config(killed, changed, "changed.yaml")])
    counts = job_counts(redo.stdout + redo.stderr)
    assert counts["allocate_refinement"] == 1 and "upscale_tile_batch" not in counts
    coherence = killed / "work/m/refine2.2"
    assert all(json.loads(m.read_text())["skipped"] == 0 for m in coherence.glob("tiles-*.done"))
    assert sha256(killed / "results/m_final.tif") != sha256(reference / "results/m_final.tif")


def test_three_gigapixel_diffusion_plan_lists_every_job(tmp_path):
    from blkassist.gpu_memory import flux_configs
    from blkassist.refine.plan import RefinePass
    from tests.flux_fixtures import FULL_RANDOM_SPEC

    source = tmp_path / "scans" / "mural_master.tif"
    source.parent.mkdir()
    pyvips.Image.black(16000, 12000, bands=3).write_to_file(
        str(source), tile=True, compression="deflate"
    )
    flux = tmp_path / "models/FLUX.1-dev"
    for part, settings in flux_configs(FULL_RANDOM_SPEC).items():  # configs, no weights
        (flux / part).mkdir(parents=True)
        (flux / part / "config.json").write_text(json.dumps(settings))
    (tmp_path / "work/models").mkdir(parents=True)
    (tmp_path / "work/models/texture-studio.safetensors").touch()  # made by train_texture
    production = yaml.safe_load((REPO / "config" / "production.yaml").read_text())
    for mural in production["murals"].values():
        mural["source"] = str(source)
    config = write_config(tmp_path, production)
    started = time.monotonic()
    result = run_snakemake(
        tmp_path, [config], "results/mural_flux_final.tif", "-n", "--resources", "gpu=4"
    )
    elapsed = time.monotonic() - started
    counts = job_counts(result.stdout)
    # 64000 x 48000: ~69 x 52 windows a pass, each pass on its own grid, 16 per job.
    stages = [RefinePass(1, n, n == 4, 64000, 48000, 1024, 96, 16, 256) for n in range(1, 5)]
    assert all(68 <= s.columns <= 70 and 51 <= s.rows <= 53 for s in stages)
    assert counts["refine_tile_batch"] == sum(s.batch_count for s in stages)
    assert counts["blend_refinement"] == 4 * 46
    assert counts["measure_seams"] == 4 and counts["refine_report"] == 1
    first, stop = stages[-1].batch_range(stages[-1].batch_count - 1)
    assert f"work/mural_flux/refine1.4/tiles-{first}-{stop - 1}.done" in result.stdout
    # The plan states each GPU job's memory, and which of the paper's cards fit it.
    line = next(t for t in result.stdout.splitlines() if t.startswith("mural mural_flux:"))
    assert re.search(r"refine_tile_batch ~1[4-9]\.\d+ GiB \(fits device\(s\) 0, 1, 2, 3\)", line)
    assert "upscale_tile_batch ~" in line
    print(f"3 Gpx diffusion dry-run: {elapsed:.1f} s")
