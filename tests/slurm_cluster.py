"""A throwaway one-node SLURM cluster from Debian's packages, for the tests.

munged, slurmctld and slurmd run from a private folder (their own munge key, socket, state,
spool, logs and ports) and are stopped by `stop()`. Only the configuration must sit at
/etc/slurm/slurm.conf: job steps ignore SLURM_CONF. Two fake GPUs (character devices made
with mknod, no driver behind them) let SLURM hand out `--gpus=1` and set
CUDA_VISIBLE_DEVICES exactly as it does on a GPU node.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONF_DIR = Path("/etc/slurm")
MARKER = "# written by the BLK-Assist test suite (tests/slurm_cluster.py)"
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
FAKE_GPUS = 2


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found): `make system-deps` "
            "as root installs Debian's slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root to launch jobs; run the SLURM test as root"
    conf = CONF_DIR / "slurm.conf"
    if conf.exists() and MARKER not in conf.read_text(errors="replace"):
        return f"{conf} belongs to a real SLURM set-up on this machine; not overwriting it"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    def __init__(self, cpus: int = 8, memory_mb: int = 64000):
        self.cpus, self.memory_mb = cpus, memory_mb
        self.lock = None
        # munged wants every folder above its socket to be searchable by all.
        self.root = Path(tempfile.mkdtemp(prefix="blkassist-slurm-"))
        self.root.chmod(0o755)
        self.started: list[Path] = []  # pid files of the daemons this object started

    @property
    def ctld_log(self) -> Path:
        return self.root / "slurmctld.log"

    def _write_config(self) -> None:
        root, host = self.root, socket.gethostname().split(".")[0]
        gpus = [root / f"fake-gpu{i}" for i in range(FAKE_GPUS)]
        for device in gpus:
            os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a char device like /dev/null
        (root / "state").mkdir()
        (root / "spool").mkdir()
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        (CONF_DIR / "slurm.conf").write_text(
            f"""{MARKER}
ClusterName=blkassist-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \
Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        (CONF_DIR / "gres.conf").write_text(
            f"{MARKER}\nNodeName=localhost Name=gpu File={root}/fake-gpu[0-{FAKE_GPUS - 1}]\n"
        )

    def start(self, timeout: float = 60.0) -> None:
        self.lock = _machine_lock()  # /etc/slurm holds one config: one test cluster at a time
        root = self.root
        self._write_config()
        subprocess.run(["mungekey", "-c", "-k", str(root / "munge.key")], check=True)
        self._daemon(
            ["munged", f"--socket={root}/munge.socket", f"--key-file={root}/munge.key",
             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
             f"--seed-file={root}/munged.seed"],
            root / "munged.pid",
        )  # fmt: skip
        self._daemon(["slurmctld", "-i"], root / "slurmctld.pid")
        self._daemon(["slurmd", "-N", "localhost"], root / "slurmd.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-n", "localhost", "-o", "%T"], capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"slurmd never registered (node state {state!r}):\n{self.logs()}")

    def _daemon(self, command: list[str], pid_file: Path) -> None:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} did not start: {result.stderr}\n{self.logs()}")
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.started.append(pid_file)

    def logs(self) -> str:
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(tails)

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones too, for MinJobAge seconds)."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True
        ).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their pid), drop its config."""
        if self.lock is None:  # never got the machine: nothing of ours runs or is written
            shutil.rmtree(self.root, ignore_errors=True)
            return
        try:
            running = [j["JobId"] for j in self.jobs() if j["JobState"] in ("RUNNING", "PENDING")]
        except (subprocess.CalledProcessError, KeyError):
            running = []  # the controller is gone: its daemons are stopped below all the same
        if running:
            subprocess.run(["scancel", *running], capture_output=True)
            time.sleep(1)  # let slurmd end the job steps before it stops
        for pid_file in reversed(self.started):
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            _terminate(pid)
        self.started.clear()
        for name in ("slurm.conf", "gres.conf"):
            path = CONF_DIR / name
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()  # releases the flock
            self.lock = None


def _machine_lock(timeout: float = 900.0):
    """Wait for another test session's cluster on this machine to finish."""
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    handle = open(CONF_DIR / ".blkassist-test-cluster.lock", "a")  # noqa: SIM115
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                message = "another test session's SLURM cluster is still running"
                raise RuntimeError(message) from None
            time.sleep(1)


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
