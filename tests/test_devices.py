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


GIB = 2**30
PAPER_BOX = {"0": 48 * GIB, "1": 48 * GIB, "2": 24 * GIB, "3": 24 * GIB}  # 2x A6000, 2x 3090


@pytest.mark.parametrize(
    ("need_gib", "held", "expected"),
    [
        (16, [], "2"),  # fits a 24 GB card: the smallest first, the 48 GB ones stay free
        (16, ["2"], "3"),
        (16, ["2", "3"], "0"),  # both small ones busy: a large one rather than waiting
        (27, [], "0"),  # an unquantised Flux job: only the 48 GB cards
        (27, ["0"], "1"),
        (None, [], "0"),  # no stated need: any device, in order
    ],
)
def test_a_job_is_leased_only_a_device_large_enough(tmp_path, monkeypatch, need_gib, held,
                                                   expected):  # fmt: skip
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holders = [_hold_in_subprocess(tmp_path, [gpu]) for gpu in held]
    try:
        for holder, gpu in zip(holders, held, strict=True):
            assert holder.stdout.readline().strip() == gpu
        need = need_gib and need_gib * GIB
        with lease_device(tmp_path, gpus=list(PAPER_BOX), need_bytes=need,
                          memory=PAPER_BOX) as lease:  # fmt: skip
            assert lease.gpu_id == expected
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_large_job_waits_for_a_large_device_even_when_a_small_one_is_free(tmp_path):
    holders = [_hold_in_subprocess(tmp_path, [gpu], seconds=1.5) for gpu in ("0", "1")]
    for holder in holders:
        holder.stdout.readline()
    started = time.monotonic()
    with lease_device(tmp_path, gpus=list(PAPER_BOX), poll_s=0.05, need_bytes=27 * GIB,
                      memory=PAPER_BOX) as lease:  # fmt: skip
        waited = time.monotonic() - started
    for holder in holders:
        holder.wait()
    assert lease.gpu_id in ("0", "1") and waited > 0.5


def test_a_job_that_fits_no_device_fails_at_once_saying_why(tmp_path):
    from blkassist.devices import DeviceMemoryError

    expected = r"needs about 60\.0 GiB.*0: 48\.0 GiB.*sizes from gpu\.devices\)\. Set quantize"
    lease = lease_device(tmp_path, gpus=list(PAPER_BOX), need_bytes=60 * GIB, memory=PAPER_BOX,
                         advice="Set quantize.")  # fmt: skip
    with pytest.raises(DeviceMemoryError, match=expected):
        lease.__enter__()
    # A device of unknown size (not declared) is assumed to fit, after the known ones.
    with lease_device(tmp_path, gpus=["2", "7"], need_bytes=30 * GIB, memory=PAPER_BOX) as lease:
        assert lease.gpu_id == "7"


def test_declared_devices_come_from_the_validated_config():
    from blkassist.config import validate_config
    from blkassist.errors import ConfigError
    from blkassist.gpu_memory import declared_devices
    from tests.conftest import REPO

    schema = REPO / "config" / "schema.yaml"
    box = [{"id": 0, "memory_gib": 48}, {"id": "1", "memory_gib": 48},
           {"id": 2, "memory_gib": 24}, {"id": 3, "memory_gib": 24}]  # fmt: skip
    config = validate_config({"gpu": {"devices": box}}, schema)
    assert declared_devices(config["gpu"]) == PAPER_BOX
    assert declared_devices(validate_config({}, schema)["gpu"]) == {}
    with pytest.raises(ConfigError, match=r"gpu\.devices\.0"):
        validate_config({"gpu": {"devices": [{"id": 0, "memory_gib": -1}]}}, schema)
