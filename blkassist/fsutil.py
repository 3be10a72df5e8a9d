"""Atomic file output: nothing is ever left half-written under its final name."""

from __future__ import annotations

import csv
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def workflow_file(path: str | os.PathLike, workflow_dir: str | os.PathLike) -> str:
    """A config path that may name a file shipped with the workflow (resources/...): as
    given where it exists (or is absolute), else under the workflow's folder."""
    if Path(path).is_absolute() or Path(path).exists():
        return os.fspath(path)
    return str(Path(workflow_dir) / path)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def append_csv_row(path: str | os.PathLike, row: dict) -> None:
    """Append `row` to a CSV log, writing the header when the file is new."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_csv_log(path: str | os.PathLike, column: str, last: int) -> None:
    """Drop rows whose `column` is past `last`: what a killed run logged after its last
    checkpoint, which the resumed run is about to log again."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if int(row[column]) <= last]
    if len(kept) == len(rows):
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
