"""The background demo build's supervisor (tests/demo_build.py) on small commands: readers
get its exit code, and a build still running when the session ends goes with its jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.demo_build import DemoBuild


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody has reaped yet (a container's init may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_readers_get_the_build_and_its_failure(tmp_path):
    ok, failing = DemoBuild(tmp_path / "ok"), DemoBuild(tmp_path / "failing")
    for build in (ok, failing):
        build.workdir.parent.mkdir()
    ok.start([sys.executable, "-c", "open('made', 'w').write('x')"], dict(os.environ))
    failing.start([sys.executable, "-c", "print('no model'); raise SystemExit(3)"], {})
    assert (ok.wait(timeout=60) / "made").read_text() == "x"
    with pytest.raises(AssertionError, match=r"failed \(3\)(.|\n)*no model"):
        failing.wait(timeout=60)
    ok.start([sys.executable, "-c", "raise SystemExit(1)"], {})  # started once only
    assert ok.exit_code.read_text() == "0"


def test_a_build_ends_with_its_jobs_when_the_session_ends(tmp_path):
    # The "build" starts a job in its process group and prints the job's pid.
    build_command = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "job = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(job.pid, flush=True)\n"
        "time.sleep(60)\n",
    ]
    build = DemoBuild(tmp_path)
    build.start(build_command, dict(os.environ))
    job = wait_for_pid(build.log)
    build.stop()  # what pytest_unconfigure does
    assert int(build.exit_code.read_text()) == -signal.SIGKILL
    assert wait_until_gone(job)

    # The session's process killed outright: the supervisor notices it was orphaned.
    (tmp_path / "killed").mkdir()
    shared = str(tmp_path / "killed")
    session = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time\n"
         "from pathlib import Path\n"
         "from tests.demo_build import DemoBuild\n"
         f"DemoBuild(Path({shared!r})).start({build_command!r}, dict(os.environ))\n"
         "time.sleep(60)\n"],
        cwd=REPO,
    )  # fmt: skip
    killed = DemoBuild(tmp_path / "killed")
    job = wait_for_pid(killed.log)
    session.kill()
    session.wait()
    assert wait_until_gone(job)
    deadline = time.monotonic() + 10
    while not killed.exit_code.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert int(killed.exit_code.read_text()) == -signal.SIGKILL


def wait_for_pid(log, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.strip():
            return int(text.split()[0])
        time.sleep(0.05)
    raise AssertionError(f"no job started: {log}")


def wait_until_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)
