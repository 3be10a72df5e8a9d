"""GPU leasing by file lock: one job per device, released when a job dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from blkassist.devices import lease_device, visible_gpus


def test_without_gpus_the_job_runs_on_cpu(tmp_path):
    with lease_device(tmp_path, gpus=[]) as lease:
        assert lease.torch_device == "cpu"


def test_concurrent_jobs_get_different_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with lease_device(tmp_path, gpus=["0", "1"]) as first:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == first.gpu_id
        holder = _hold_in_subprocess(tmp_path, ["0", "1"])
        try:
            assert holder.stdout.readline().strip() != first.gpu_id
        finally:
            holder.kill()
            holder.wait()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_killed_job_frees_its_device(tmp_path):
    holder = _hold_in_subprocess(tmp_path, ["5"])
    assert holder.stdout.readline().strip() == "5"
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
    holder.wait()
    with lease_device(tmp_path, gpus=["5"], poll_s=0.05) as lease:
        assert lease.gpu_id == "5"


def test_waits_while_all_devices_are_taken(tmp_path):
    holder = _hold_in_subprocess(tmp_path, ["0"], seconds=1.5)
    assert holder.stdout.readline().strip() == "0"
    started = time.monotonic()
    with lease_device(tmp_path, gpus=["0"], poll_s=0.05) as lease:
        waited = time.monotonic() - started
    holder.wait()
    assert lease.gpu_id == "0"
    assert waited > 0.5


@pytest.mark.parametrize(("preset", "expected"), [("2,3", ["2", "3"]), ("", []), ("-1", [])])
def test_scheduler_device_list_is_honoured(monkeypatch, preset, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", preset)
    monkeypatch.delenv("BLKASSIST_DEVICE", raising=False)
    assert visible_gpus() == expected


def test_force_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("BLKASSIST_DEVICE", "cpu")
    assert visible_gpus() == []


def _hold_in_subprocess(lock_dir, gpus, seconds=60.0):
    code = (
        "import sys, time\n"
        "from blkassist.devices import lease_device\n"
        f"with lease_device({str(lock_dir)!r}, gpus={gpus!r}, poll_s=0.05) as lease:\n"
        "    print(lease.gpu_id, flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_slurm_jobs_sharing_a_lock_folder_do_not_wait_for_each_other(tmp_path, monkeypatch):
    """With device cgroups every SLURM job sees its own GPU as "0": the scheduler already
    made them exclusive, so two jobs (on one node or two) must both start at once."""
    monkeypatch.delenv("BLKASSIST_DEVICE", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    code = (
        "from blkassist.devices import lease_device\n"
        f"with lease_device({str(tmp_path)!r}, poll_s=0.05) as lease:\n"
        "    print(lease.gpu_id, flush=True)\n"
    )
    with lease_device(tmp_path) as first:
        assert first.gpu_id == "0"
        other = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "SLURM_JOB_ID": "102"},
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert other.stdout.strip() == "0", other.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"slurm-job-101", "slurm-job-102"}
