"""Run a command and watch the memory of its whole process tree (shared by the benchmarks).

Two independent measurements:

* polling: every `interval` seconds psutil samples the RSS of the root process and of every
  descendant; the peak of each process is kept with a label (for Snakemake script jobs, the
  rule name read off the temporary script's file name ``tmpXXXX.RULE.py``). Short peaks
  between two samples can be missed.
* kernel: ``wait4`` on the root returns ``ru_maxrss``, the exact high-water mark of the
  largest single process in the tree (root included, descendants that were waited for).

It also reports the CPU seconds the machine spent on other work during the run (busy time
from /proc/stat minus the tree's and the watcher's own), so that timings taken on a busy
machine can be recognised.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024
_SCRIPT_RULE = re.compile(r"tmp[^./]*\.([A-Za-z0-9_]+)\.py$")


def label_of(process: psutil.Process) -> str:
    """A short name for a process: the Snakemake rule of a script job, else its command."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    for arg in cmdline:
        match = _SCRIPT_RULE.search(arg)
        if match:
            return f"rule {match.group(1)}"
    if not cmdline:
        return process.name()
    words = [os.path.basename(cmdline[0])]
    words += [os.path.basename(arg) if "/" in arg else arg for arg in cmdline[1:3]]
    return " ".join(words)[:60]


@dataclass
class Watched:
    returncode: int
    wall_s: float
    root_peak_mb: float  # polled RSS of the root process itself
    desc_peak_mb: float  # polled RSS of the largest single descendant (root excluded)
    desc_peak_label: str
    tree_total_peak_mb: float  # polled sum of RSS over the tree at one instant
    kernel_maxrss_mb: float  # ru_maxrss from wait4: largest single process, root included
    samples: int
    cpu_s: float  # user + system CPU seconds of the tree (from wait4)
    other_cpu_s: float  # CPU seconds the machine spent on anything else meanwhile
    peaks_by_label: dict[str, float] = field(default_factory=dict)


def run_watched(cmd, *, cwd=None, env=None, stdout=None, stderr=None, interval=0.2) -> Watched:
    """Run `cmd` to completion, sampling RSS every `interval` s; return the figures."""
    started = time.perf_counter()
    machine_before = _busy_cpu_s()
    self_before = _self_cpu_s()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    root = psutil.Process(proc.pid)
    labels: dict[int, str] = {}
    peak_by_pid: dict[int, float] = {}
    root_peak = total_peak = 0.0
    samples = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        total = 0.0
        try:
            rss = root.memory_info().rss / MB
            root_peak = max(root_peak, rss)
            total += rss
            children = root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            children = []
        for child in children:
            try:
                rss = child.memory_info().rss / MB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            key = child.pid
            if key not in labels or labels[key] in ("?", "python3", "python"):
                labels[key] = label_of(child)
            peak_by_pid[key] = max(peak_by_pid.get(key, 0.0), rss)
        total_peak = max(total_peak, total)
        samples += 1
        time.sleep(interval)
    wall = time.perf_counter() - started
    tree_cpu = usage.ru_utime + usage.ru_stime
    other = _busy_cpu_s() - machine_before - tree_cpu - (_self_cpu_s() - self_before)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
    by_label: dict[str, float] = {}
    for key, peak in peak_by_pid.items():
        by_label[labels[key]] = max(by_label.get(labels[key], 0.0), peak)
    if peak_by_pid:
        top = max(peak_by_pid, key=peak_by_pid.get)
        desc_peak, desc_label = peak_by_pid[top], labels[top]
    else:
        desc_peak, desc_label = 0.0, "-"
    return Watched(
        returncode=proc.returncode,
        wall_s=wall,
        root_peak_mb=root_peak,
        desc_peak_mb=desc_peak,
        desc_peak_label=desc_label,
        tree_total_peak_mb=total_peak,
        kernel_maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        samples=samples,
        cpu_s=tree_cpu,
        other_cpu_s=max(other, 0.0),
        peaks_by_label=by_label,
    )


def _busy_cpu_s() -> float:
    times = psutil.cpu_times()  # guest time is already counted in user on Linux
    return times.user + times.nice + times.system + times.irq + times.softirq


def _self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """A plain fixed-width table (numbers right-aligned)."""
    text = [[h for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    numeric = [all(_is_num(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    if title:
        print(f"\n{title}")

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    print(line(text[0]))
    print("  ".join("-" * w for w in widths))
    for row in text[1:]:
        print(line(row))


def _is_num(value) -> bool:
    return isinstance(value, int | float)


def _fmt(value) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)
