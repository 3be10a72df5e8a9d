"""Bind a GPU job to one free device.

Snakemake's `gpu` resource only counts; it does not say which device a job may use. Each
job therefore takes a device itself by locking a per-device file (flock: released by the
kernel when the process dies, so a crashed job never leaks a device). A device list set by
a cluster scheduler in CUDA_VISIBLE_DEVICES is honoured: the job only picks among those.

Under SLURM the scheduler has already given the job its GPUs exclusively, and with device
cgroups every job sees its GPU as "0": locks are then kept per SLURM job, so jobs on other
nodes (or other jobs on this node) sharing the lock folder never wait for each other.

A job that says how much device memory it needs is only given a device with at least that
much (sizes from `gpu.devices` in the config, else from nvidia-smi), the smallest such
first, so that on a mixed box (the paper's 2x48 + 2x24 GB) small jobs leave the large
cards to the jobs that need them; a job that fits no device fails at once, saying why.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from blkassist.errors import BlkAssistError
from blkassist.gpu_memory import fitting_devices, gib

log = logging.getLogger(__name__)


class DeviceMemoryError(BlkAssistError):
    """No device is large enough for the job."""


FORCE_CPU_ENV = "BLKASSIST_DEVICE"  # set to "cpu" to ignore GPUs


def visible_gpus() -> list[str]:
    """Device ids this process may use, without initialising CUDA."""
    if os.environ.get(FORCE_CPU_ENV, "").lower() == "cpu":
        return []
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return [token.strip() for token in preset.split(",") if token.strip() not in ("", "-1")]
    driver = Path("/proc/driver/nvidia/gpus")
    count = len(list(driver.iterdir())) if driver.is_dir() else 0
    return [str(index) for index in range(count)]


@dataclass
class Lease:
    device: str  # "cpu" or "cuda"
    gpu_id: str | None  # the physical id we locked, as CUDA_VISIBLE_DEVICES names it

    @property
    def torch_device(self) -> str:
        return "cuda:0" if self.gpu_id is not None else "cpu"


def _try_lock(path: Path):
    """An open, exclusively locked handle on `path`, or None if another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 - stays open for the whole lease
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def detected_memory() -> dict[str, int]:
    """Bytes of each GPU by id (PCI bus order, as the lease sets CUDA_DEVICE_ORDER), from
    nvidia-smi without touching CUDA; empty where it cannot tell."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    sizes = {}
    for line in found.splitlines():
        index, _, mib = line.partition(",")
        if index.strip().isdigit() and mib.strip().isdigit():
            sizes[index.strip()] = int(mib) * 2**20
    return sizes


def _usable(gpus: list[str], need: int | None, memory: Mapping[str, int] | None, advice: str):
    """The devices a job needing `need` bytes may take, in the order to try them."""
    if not need:
        return gpus
    sizes = dict(memory) if memory else detected_memory()
    known = {gpu: sizes[gpu] for gpu in gpus if gpu in sizes}
    unknown = [gpu for gpu in gpus if gpu not in sizes]
    fits = fitting_devices(need, known) + unknown
    if not fits:
        listing = ", ".join(f"{gpu}: {gib(size)} GiB" for gpu, size in known.items())
        raise DeviceMemoryError(
            f"this job needs about {gib(need)} GiB of device memory, more than any of its "
            f"GPUs has ({listing}; sizes from {'gpu.devices' if memory else 'nvidia-smi'}). "
            f"{advice}"
        )
    if unknown:
        log.info("GPU(s) %s of unknown size (not in gpu.devices): assumed large enough", unknown)
    return fits


@contextmanager
def lease_device(
    lock_dir: str | os.PathLike,
    gpus: list[str] | None = None,
    poll_s=0.5,
    *,
    need_bytes: int | None = None,
    memory: Mapping[str, int] | None = None,
    advice: str = "Run it on a larger GPU.",
):
    """Hold one free GPU for the duration of the block (or the CPU when there is none).

    With `need_bytes`, only a GPU with at least that much memory (`memory`: id -> bytes,
    else nvidia-smi's sizes); `advice` says what to change when none has it. Sets
    CUDA_VISIBLE_DEVICES to the leased id, so call this before torch touches CUDA.
    """
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible_gpus() if gpus is None else gpus
    if os.environ.get("SLURM_JOB_ID") and preset is not None:
        memory = None  # SLURM renumbers its GPUs per job: only nvidia-smi's view holds
    if gpus:
        gpus = _usable(gpus, need_bytes, memory, advice)
    if not gpus:
        if os.environ.get(FORCE_CPU_ENV, "").lower() == "cpu" and preset not in (None, ""):
            log.info(
                "%s=cpu: running on the CPU, not on CUDA_VISIBLE_DEVICES=%s%s",
                FORCE_CPU_ENV,
                preset,
                _scheduler_note(),
            )
        yield Lease("cpu", None)
        return
    lock_dir = Path(lock_dir)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job and preset is not None:
        lock_dir = lock_dir / f"slurm-job-{slurm_job}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu_id in gpus:
            handle = _try_lock(lock_dir / f"gpu-{gpu_id}.lock")
            if handle is None:
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            log.info(
                "leased GPU %s of %s (lock %s)%s%s", gpu_id, gpus, handle.name,
                f", job needs ~{gib(need_bytes)} GiB" if need_bytes else "", _scheduler_note(),
            )  # fmt: skip
            try:
                yield Lease("cuda", gpu_id)
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            log.warning("all GPUs it may use %s are leased; waiting for one to free up", gpus)
            waited = True
        time.sleep(poll_s)


def _scheduler_note() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f" [devices chosen by SLURM job {job}]" if job else ""
