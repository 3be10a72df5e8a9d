"""The demo's workdir for the tests that read it: `make demo` (rule all on config/config.yaml)
run once per test session, in the background from the start of the session.

The build is minutes of CPU on a chain of single-threaded jobs. Run inside a test, it held a
pytest-xdist worker for all that time and left the other worker's waits (the SLURM
scheduler's status polls, vLLM server starts) with cores idle. Started by the process that
owns the session (the xdist controller, or pytest itself when serial) as soon as the tests
are known, it runs beside every worker; its readers are scheduled last and find it done.
Where nothing started it (a run that does not group the demo's readers), the first reader
builds it behind a file lock, as before.

A supervisor (this file run as a script) runs the build in its own process group, records how
it ended, and ends it with its jobs when the session ends first, however it ends: pytest's
own exit, Ctrl-C, or a kill that leaves no chance to clean up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

BUILD_TIMEOUT_S = 1800


class DemoBuild:
    """The demo workdir under `shared` (the folder every worker of the session can see) and
    the files that tell the session's processes how its build went."""

    def __init__(self, shared: Path):
        self.workdir = shared / "demo"
        self.log = shared / "demo.log"
        self.started = shared / "demo.started"  # a background build was launched
        self.exit_code = shared / "demo.exit"  # ... and ended with this code
        self.built = shared / "demo.built"  # a reader built it itself
        self.lock = FileLock(shared / "demo.lock")
        self.process: subprocess.Popen | None = None

    def start(self, command: list[str], env: dict[str, str]) -> None:
        """Launch the build under a supervisor without waiting for it (once: later calls do
        nothing)."""
        with self.lock:
            if self.started.exists() or self.built.exists():
                return
            self.workdir.mkdir(exist_ok=True)
            with open(self.log, "wb") as sink:
                self.process = subprocess.Popen(
                    [sys.executable, __file__, str(self.exit_code), *command],
                    cwd=self.workdir,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            self.started.touch()

    def stop(self) -> None:
        """End a build still running when the session ends (a failure with -x, Ctrl-C)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the supervisor ends the build's process group
            self.process.wait()

    def wait(self, timeout: float = BUILD_TIMEOUT_S) -> Path:
        """The workdir once the background build has finished; raises if it failed."""
        deadline = time.monotonic() + timeout
        while not self.exit_code.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo build ran past {timeout} s; log: {self.log}")
            time.sleep(1)
        code = int(self.exit_code.read_text())
        if code != 0:
            tail = self.log.read_text(errors="replace")[-8000:]
            raise AssertionError(f"the demo build failed ({code}); log {self.log}:\n{tail}")
        return self.workdir

    def build_here(self, build) -> Path:
        """No background build: the first reader runs `build(workdir)` behind the lock."""
        with self.lock:
            if not self.built.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)  # a build that failed part-way
                self.workdir.mkdir()
                build(self.workdir)
                self.built.touch()
        return self.workdir


def supervise(exit_code: Path, command: list[str]) -> int:
    """Run `command` in its own process group and write its exit code to `exit_code`; end it
    and its jobs on SIGTERM or once the process that started this one has gone (this one is
    then re-parented)."""
    owner, group = os.getppid(), []

    def end(*_):
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, end)
    process = subprocess.Popen(command, start_new_session=True)
    group.append(process.pid)
    while process.poll() is None:
        if os.getppid() != owner:
            end()
        time.sleep(0.5)
    partial = exit_code.with_suffix(".partial")
    partial.write_text(str(process.returncode))
    partial.replace(exit_code)  # readers never see a half-written code
    return process.returncode


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2:]))
