"""profiles/slurm against a real one-node SLURM cluster (Debian's slurm-wlm packages).

The mural is the demo's (the synthetic pen-and-ink artwork, enlarged 4x by a neural model,
so its tile jobs ask for a GPU), with a small random RRDBNet instead of the real x4plus
weights to keep the run short on two cores. The artwork is drawn once up front and read
from disk, as a studio's scan would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blkassist.demo.synth import pen_and_ink
from tests.conftest import REPO, run_snakemake, save_tiny_rrdbnet, snakemake_cmd, write_config
from tests.slurm_cluster import FAKE_GPUS, SlurmCluster, unavailable_reason

pytestmark = pytest.mark.slow

TILES_PER_JOB = 6


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster()
    try:
        cluster.start()
    except RuntimeError as error:
        cluster.stop()
        pytest.skip(f"this machine cannot start a SLURM node: {error}")
    yield cluster
    cluster.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mural_config(workdir: Path, weights: Path) -> Path:
    pen_and_ink(256, 192, seed=7, alpha=False).save(workdir / "art.png")
    config = {
        "murals": {
            "m": {"source": "art.png", "model": str(weights), "scale": 4,
                  "tile": 64, "pad": 16, "tiles_per_job": TILES_PER_JOB},
        },
    }  # fmt: skip
    return write_config(workdir, config)


def slurm_args(workdir: Path) -> list[str]:
    return [
        "--profile", str(REPO / "profiles" / "slurm"),
        "--slurm-no-account",  # no accounting database on the test cluster
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--jobs", "4",
        "--latency-wait", "5",
    ]  # fmt: skip


def slurm_env() -> dict[str, str]:
    return {**os.environ, "BLKASSIST_DEVICE": "cpu"}


def batch_job_ids(cluster: SlurmCluster, batch: str) -> list[str]:
    return [
        job["JobId"]
        for job in cluster.jobs()
        # the plugin's comment: rule_RULE_wildcards_ then the wildcard values
        # (mural_step_first_last); a batch's progress log is named by its first tile
        if job.get("Comment", "").startswith(f"rule_upscale_tile_batch_wildcards_m_1_{batch}_")
        and job.get("JobState") == "RUNNING"
    ]


def test_mural_on_slurm_matches_local_and_resumes_a_scancelled_job(cluster, tmp_path):
    weights = save_tiny_rrdbnet(tmp_path / "slowish.pth", num_block=4, num_feat=32)
    local, on_slurm = tmp_path / "local", tmp_path / "slurm"
    for folder in (local, on_slurm):
        folder.mkdir()
    run_snakemake(local, [mural_config(local, weights)], "results/m_final.tif")

    # First run on SLURM: cancel one tile batch's SLURM job halfway through.
    config = mural_config(on_slurm, weights)
    command = snakemake_cmd(on_slurm, [config], *slurm_args(on_slurm), "results/m_final.tif")
    output_file = on_slurm / "first_run.out"
    with open(output_file, "w") as sink:  # a file, not a pipe: a full pipe would stall it
        process = subprocess.Popen(
            command, cwd=on_slurm, env=slurm_env(), stdout=sink, stderr=subprocess.STDOUT
        )
    progress = on_slurm / "work" / "m" / "canvas1.progress"
    cancelled = None
    deadline = time.monotonic() + 240
    while cancelled is None and process.poll() is None and time.monotonic() < deadline:
        for record in progress.glob("batch-*.tiles") if progress.is_dir() else []:
            batch = record.stem.split("-")[1]
            done = record.read_text().split()
            if 0 < len(done) < TILES_PER_JOB:
                jobs = batch_job_ids(cluster, batch)
                if jobs:
                    subprocess.run(["scancel", *jobs], check=True)
                    cancelled = (batch, jobs[0])
                    break
        time.sleep(0.05)
    process.wait(timeout=300)
    output = output_file.read_text()
    assert cancelled is not None, f"never caught a tile batch halfway:\n{output[-4000:]}"
    assert process.returncode != 0, output[-4000:]
    assert not (on_slurm / "results" / "m_final.tif").exists()
    states = {job["JobId"]: job["JobState"] for job in cluster.jobs()}
    assert states[cancelled[1]] == "CANCELLED"

    # Second run: the cancelled batch keeps the tiles it finished; the result is the local one.
    rerun = subprocess.run(
        snakemake_cmd(on_slurm, [config], *slurm_args(on_slurm), "results/m_final.tif"),
        cwd=on_slurm, env=slurm_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-6000:]
    first = int(cancelled[0])
    marker = on_slurm / "work" / "m" / "pass1" / f"tiles-{first}-{first + TILES_PER_JOB - 1}.done"
    assert json.loads(marker.read_text())["skipped"] > 0
    assert sha256(on_slurm / "results/m_final.tif") == sha256(local / "results/m_final.tif")

    # Every job went through the scheduler; the tile jobs asked it for one GPU each and
    # SLURM gave each its own device through CUDA_VISIBLE_DEVICES.
    jobs = cluster.jobs()
    rules = {
        re.match(r"rule_(\w+?)(_wildcards_|$)", j["Comment"])[1] for j in jobs if "Comment" in j
    }
    assert {"probe_source", "ingest_source", "allocate_canvas",
            "upscale_tile_batch", "assemble_mural"} <= rules  # fmt: skip
    for job in jobs:
        gpu_job = "upscale_tile_batch" in job.get("Comment", "")
        asked = "gres:gpu:1" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
        assert asked == gpu_job, job
    batch_logs = list((on_slurm / "logs" / "m" / "pass1").glob("tiles-*.log"))
    assert batch_logs
    for log in batch_logs:
        seen = re.search(
            r"not on CUDA_VISIBLE_DEVICES=(\d+) \[devices chosen by SLURM job (\d+)\]",
            log.read_text(),
        )
        assert seen, log.read_text()
        assert int(seen[1]) < FAKE_GPUS
    assert "sbatch" in cluster.ctld_log.read_text() or "_slurm_rpc_submit_batch_job" in (
        cluster.ctld_log.read_text()
    )

    again = subprocess.run(
        snakemake_cmd(on_slurm, [config], *slurm_args(on_slurm), "results/m_final.tif"),
        cwd=on_slurm, env=slurm_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Nothing to be done" in again.stdout + again.stderr


def test_device_lease_takes_the_gpu_slurm_gives_each_job(cluster, tmp_path):
    code = (
        "import os, time\n"
        "from blkassist.devices import lease_device\n"
        f"with lease_device({str(tmp_path / 'locks')!r}, poll_s=0.05) as lease:\n"
        "    print(os.environ['SLURM_JOB_ID'], lease.gpu_id, os.environ['CUDA_VISIBLE_DEVICES'],"
        " flush=True)\n"
        "    time.sleep(2)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BLKASSIST_DEVICE"}
    env["PYTHONPATH"] = str(REPO)
    steps = [
        subprocess.Popen(
            ["srun", "--gpus=1", "-n1", sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(FAKE_GPUS)
    ]
    results = []
    for step in steps:
        out, err = step.communicate(timeout=60)
        assert step.returncode == 0, err
        results.append(out.split())
    jobs = {job for job, _, _ in results}
    leased = {gpu for _, gpu, _ in results}
    assert len(jobs) == FAKE_GPUS
    assert leased == {str(i) for i in range(FAKE_GPUS)}  # each job got a different device
    assert all(gpu == visible for _, gpu, visible in results)
    assert {p.name for p in (tmp_path / "locks").iterdir()} == {f"slurm-job-{j}" for j in jobs}


def test_demo_artwork_mural_made_by_the_workflow_runs_on_slurm(cluster, tmp_path):
    weights = save_tiny_rrdbnet(tmp_path / "tiny.pth")
    config = {
        "demo_artwork": {"path": "work/demo/art.png", "width": 64, "height": 48, "seed": 7},
        "murals": {"m": {"source": "work/demo/art.png", "model": str(weights), "tile": 32}},
    }
    path = write_config(tmp_path, config)
    result = subprocess.run(
        snakemake_cmd(tmp_path, [path], *slurm_args(tmp_path), "results/m_final.tif"),
        cwd=tmp_path, env=slurm_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "results" / "m_final.tif").exists()
