"""Let a Snakemake run that was killed (SIGKILL, power loss) be resumed by just rerunning.

Snakemake leaves its locks in .snakemake/locks when killed, and the next run refuses to
start until `--unlock`. Every run of this workflow holds a shared flock on a liveness file
for its whole life; the kernel drops it when the process dies. A new run that can take the
lock exclusively therefore knows no other run is alive, so any Snakemake locks left are
stale and safe to remove.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

_liveness_handle = None  # held open for the life of the process


def clear_stale_locks(workdir: str | os.PathLike = ".") -> list[Path]:
    """Remove Snakemake locks in `workdir` if no other run is alive; return what was removed."""
    global _liveness_handle
    meta = Path(workdir) / ".snakemake"
    meta.mkdir(parents=True, exist_ok=True)
    handle = open(meta / "blkassist-alive.lock", "a+")  # noqa: SIM115 - held until exit
    removed: list[Path] = []
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another run is alive here: its locks are real
    else:
        for lock in sorted((meta / "locks").glob("*.lock")):
            lock.unlink()
            removed.append(lock)
    fcntl.flock(handle, fcntl.LOCK_SH)
    if _liveness_handle is not None:
        _liveness_handle.close()
    _liveness_handle = handle
    return removed
