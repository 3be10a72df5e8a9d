"""Planning and preflight: the numbers before a run, and what must fail in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from blkassist import plan as planning
from blkassist.config import validate_config
from blkassist.errors import ModelFileError
from blkassist.plan import (
    DiskSpaceError,
    PassCost,
    check_disk,
    check_model,
    check_mural,
    estimate,
    memory_table,
    peak_disk_bytes,
    plan_line,
    sr_memory,
    sr_pass_costs,
    with_refinement,
)
from blkassist.refine.settings import mural_refine_stages
from blkassist.tiling import plan_mural
from tests.conftest import (
    REPO,
    run_snakemake,
    save_tiny_rrdbnet,
    snakemake_cmd,
    textured,
    write_config,
)


def test_estimate_sums_passes_of_any_kind():
    plan = plan_mural(1000, 800, scale=8, tile=256, tiles_per_job=4)
    sr = sr_pass_costs(plan, 3, "realesrgan-x4plus", 32, seconds_per_tile=2.0)
    assert [c.tiles for c in sr] == [4 * 4, 16 * 13]
    refine = PassCost("diffusion pass A", tiles=10, jobs=2, seconds_per_tile=30.0,
                      canvas_bytes=8000 * 6400 * 3)  # fmt: skip
    report = estimate((1000, 800), (8000, 6400), 3, [*sr, refine])
    assert report["tiles"] == 16 + 208 + 10
    assert report["jobs"] == 4 + 52 + 2
    assert report["gpu_hours"] == pytest.approx(((16 + 208) * 2.0 + 300) / 3600)
    canvases = report["disk_bytes"]["canvases"]
    assert canvases == {
        "canvas0": 1000 * 800 * 3,
        "canvas1": 4000 * 3200 * 3,
        "canvas2": 8000 * 6400 * 3,
        "canvas3": 8000 * 6400 * 3,
    }
    assert report["disk_bytes"]["result"] == int(8000 * 6400 * 3 * 4 / 3)
    assert "234 tiles in 58 jobs" in plan_line("m", report)
    assert peak_disk_bytes(report, temporary=False) == report["disk_bytes_total"]
    # temporary canvases: at most the last canvas and the result at once, here
    assert peak_disk_bytes(report, temporary=True) == canvases["canvas3"] + int(
        8000 * 6400 * 3 * 4 / 3
    )


def production_refinement(**refine):
    """The production diffusion mural (16000x12000 -> 64000x48000): its SR plan, stages."""
    config = yaml.safe_load((REPO / "config" / "production.yaml").read_text())
    config["murals"]["mural_flux"]["refine"].update(refine)
    config = validate_config(config, REPO / "config" / "schema.yaml")
    plan = plan_mural(16000, 12000, target_long_side=64000, tile=512, tiles_per_job=16)
    outputs = [(p.output_width, p.output_height) for p in plan.passes]
    stages = mural_refine_stages(config, "mural_flux", outputs, (64000, 48000))
    return plan, stages


@pytest.mark.parametrize("seconds_per_window", [None, 2.5])
def test_the_diffusion_path_is_in_the_plan(seconds_per_window):
    """Windows, tile and blend jobs and window stores of every refinement pass count, in
    the order they run; without a seconds-per-window figure the hours say unknown."""
    plan, stages = production_refinement(seconds_per_window=seconds_per_window)
    assert [s.name for s in stages] == ["1.1", "1.2", "1.3", "1.4"]
    sr = sr_pass_costs(plan, 3, "realesrgan-x4plus", 32, seconds_per_tile=1.0)
    costs = with_refinement(sr, stages, 3, stages and seconds_per_window)
    report = estimate((16000, 12000), (64000, 48000), 3, costs)
    windows = sum(s.window_count for s in stages)  # ~69 x 52 a pass, each on its own grid
    assert 4 * 68 * 51 <= windows <= 4 * 70 * 53
    assert report["tiles"] == 768 + windows
    tile_jobs = sum(s.batch_count for s in stages)
    assert report["jobs"] == 48 + tile_jobs + 4 * 46  # what the dry run lists
    canvases = report["disk_bytes"]["canvases"]
    assert list(canvases) == ["canvas0", "canvas1", "refine1.1", "refine1.2", "refine1.3",
                              "refine1.4"]  # fmt: skip
    assert canvases["refine1.1"] == 64000 * 48000 * 3 + stages[0].window_count * 1024**2 * 3
    line = plan_line("mural_flux", report)
    if seconds_per_window is None:
        assert report["gpu_hours"] == pytest.approx(768 / 3600)
        assert report["gpu_hours_unknown_for"] == [c.name for c in costs[1:]]
        assert "GPU-hours + unknown" in line and "refine.seconds_per_window" in line
    else:
        assert report["gpu_hours"] == pytest.approx((768 + windows * 2.5) / 3600)
        assert not report["gpu_hours_unknown_for"] and "unknown" not in line


def test_the_plan_states_each_gpu_jobs_memory_and_the_cards_that_fit_it():
    from blkassist.gpu_memory import GIB, refine_job_memory
    from tests.flux_fixtures import FULL_RANDOM_SPEC

    plan, _ = production_refinement()
    box = {"0": 48 * GIB, "1": 48 * GIB, "2": 24 * GIB, "3": 24 * GIB}
    settings = {"tile": 1024, "tiles_per_forward": 2, "max_sequence_length": 512}
    jobs = {
        "upscale_tile_batch": sr_memory("realesrgan-x4plus", 512, 32, 4, 4, "auto"),
        "refine_tile_batch": refine_job_memory(FULL_RANDOM_SPEC, quantize=True, **settings),
        "bf16": refine_job_memory(FULL_RANDOM_SPEC, quantize=False, **settings),
        "missing": {"unknown": "models/FLUX.1-dev: cannot read the model's configs"},
    }
    table = memory_table(jobs, box)
    assert table["refine_tile_batch"]["fits"] == "fits device(s) 0, 1, 2, 3"
    assert table["bf16"]["fits"] == "fits device(s) 0, 1"
    assert memory_table(jobs, {})["bf16"]["fits"] == "device sizes not declared (gpu.devices)"
    sr = sr_pass_costs(plan, 3, "realesrgan-x4plus", 32, seconds_per_tile=1.0)
    report = estimate((16000, 12000), (64000, 48000), 3, sr, table)
    assert report["gpu_memory"] == table
    line = plan_line("mural_flux", report)
    gib = table["refine_tile_batch"]["gib"]
    assert f"refine_tile_batch ~{gib} GiB (fits device(s) 0, 1, 2, 3)" in line
    assert "missing unknown" in line


def test_a_random_refinement_model_keeps_the_plan_to_sr():
    _, stages = production_refinement(model="resources/flux/tiny.yaml")
    assert stages == []


def test_the_disk_check_counts_the_refinement_window_stores(tmp_path, monkeypatch):
    """Free space enough for the SR canvases and the result but not the window stores:
    the diffusion mural is refused at its check, the same mural on the SR path is not."""
    plan, stages = production_refinement()
    sr_only = estimate((16000, 12000), (64000, 48000), 3, sr_pass_costs(plan, 3, "lanczos", 32))
    free = sr_only["disk_bytes_total"] + 10**9
    monkeypatch.setattr(planning.shutil, "disk_usage", lambda _: SimpleNamespace(free=free))
    geometry = [p.geometry() for p in plan.passes]
    args = ((16000, 12000, False), "", "lanczos", geometry, (64000, 48000), [])
    check_mural(*args, str(tmp_path / "sr.json"))
    with pytest.raises(DiskSpaceError, match=r"the mural needs up to 10\d\.\d GB"):
        check_mural(*args, str(tmp_path / "diffusion.json"), refine_stages=stages)


def test_lanczos_costs_no_gpu_hours():
    plan = plan_mural(100, 100, scale=4, tile=50)
    report = estimate((100, 100), (400, 400), 4, sr_pass_costs(plan, 4, "lanczos", 8))
    assert report["gpu_hours"] == 0 and report["tiles"] == 4


def test_disk_preflight_fails_with_the_numbers(tmp_path):
    free = check_disk(1, tmp_path)
    with pytest.raises(DiskSpaceError, match=r"needs up to .* bytes.*free there") as error:
        check_disk(free * 10, tmp_path / "work")
    assert f"{free * 10:,}" in str(error.value)
    old = tmp_path / "old_canvas"
    old.mkdir()
    (old / "chunk").write_bytes(b"x" * 5000)
    assert check_disk(1, tmp_path, replaced=[old]) >= 5000  # what a rerun replaces is free


def test_model_check_reads_scale_and_refuses_what_does_not_fit(tmp_path):
    plan = plan_mural(64, 64, scale=4, tile=32).passes
    x4 = save_tiny_rrdbnet(tmp_path / "x4.pth")
    assert check_model(x4, plan)["native_scale"] == 4
    x2 = save_tiny_rrdbnet(tmp_path / "x2.pth", scale=2)
    with pytest.raises(ModelFileError, match=r"x2\.pth: a x2 model, but the plan has a x4"):
        check_model(x2, plan)
    assert check_model(x2, plan_mural(64, 64, scale=2, tile=32).passes)["native_scale"] == 2


class Payload:
    """Unpickling this would run code: weights-only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.slow
def test_bad_models_fail_before_ingest_and_plan_target(tmp_path):
    Image.fromarray(textured(96, 128)).save(tmp_path / "art.png")
    (tmp_path / "notes.pth").write_text("not weights\n")
    torch.save({"params_ema": Payload()}, tmp_path / "code.pth")
    save_tiny_rrdbnet(tmp_path / "x2.pth", scale=2)
    murals = {
        name: {"source": "art.png", "model": model, "tile": 32, "tiles_per_job": 3}
        for name, model in [("junk", "notes.pth"), ("code", "code.pth"), ("x2", "x2.pth"),
                            ("missing", "nowhere.pth")]
    }  # fmt: skip
    murals["good"] = {"source": "art.png", "model": "lanczos", "tile": 32, "tiles_per_job": 5,
                      "seconds_per_tile": 3.6}  # fmt: skip
    config = write_config(tmp_path, {"murals": murals})
    dry = run_snakemake(tmp_path, [config], "-n")
    assert "mural good: 512x384 (0.00 Gpx), 1 pass(es), 12 tiles in 3 jobs" in dry.stdout
    result = run_snakemake(tmp_path, [config], "--keep-going", check=False)
    messages = result.stdout + result.stderr
    assert result.returncode != 0
    assert "notes.pth: not a weights-only PyTorch or safetensors file" in messages
    assert "code.pth: not a weights-only PyTorch or safetensors file" in messages
    assert "pwned" not in messages
    assert "x2.pth: a x2 model, but the plan has a x4 pass" in messages
    assert "nowhere.pth: model file not found" in messages
    for name in ("junk", "code", "x2"):
        assert (tmp_path / f"work/{name}/probe.json").exists()
        assert not (tmp_path / f"work/{name}/canvas0.zarr").exists()  # no heavy work
    assert (tmp_path / "results/good_final.tif").exists()

    run_snakemake(tmp_path, [config], "results/good_plan.json")
    plan = json.loads((tmp_path / "results/good_plan.json").read_text())
    assert (plan["tiles"], plan["jobs"]) == (12, 3)
    assert plan["disk_bytes"]["canvases"]["canvas1"] == 512 * 384 * 3
    assert plan["passes"][0]["seconds_per_tile"] == 3.6


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    save_tiny_rrdbnet(tmp_path / "slow.pth", num_block=4, num_feat=32)
    Image.fromarray(textured(192, 256)).save(tmp_path / "art.png")
    mural = {"source": "art.png", "model": "slow.pth", "tile": 32, "tiles_per_job": 48}
    config = write_config(tmp_path, {"murals": {"m": mural}})
    first = subprocess.Popen(
        snakemake_cmd(tmp_path, [config]),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "BLKASSIST_DEVICE": "cpu"},
    )
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before it could be overlapped"
        second = run_snakemake(tmp_path, [config], check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        assert "Removed stale Snakemake lock" not in second.stdout
        assert first.wait(timeout=600) == 0  # the first run was not disturbed
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (tmp_path / "results/m_final.tif").exists()


@pytest.mark.slow
def test_a_mural_too_big_for_the_disk_fails_at_its_check_with_the_numbers(tmp_path):
    import pyvips

    pyvips.Image.black(4000, 3000, bands=3).write_to_file(str(tmp_path / "big.png"))
    mural = {
        "source": "big.png",
        "model": "lanczos",
        "path": "sr",
        "scale": 64,
        "tiles_per_job": 100000,
    }
    config = write_config(tmp_path, {"murals": {"huge": mural}})
    result = run_snakemake(tmp_path, [config], check=False)
    messages = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the mural needs up to" in messages and "are free there" in messages
    assert "canvases.temporary" in messages
    assert not (tmp_path / "work/huge/canvas0.zarr").exists()
