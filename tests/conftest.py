"""Shared fixtures: real images of every kind, tiny real models, the real Snakemake engine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blkassist.compat import rrdbnet_class
from tests.demo_build import DemoBuild

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# One thread per process. `make test` runs two workers and the background demo build (two
# jobs) on two cores: a second torch/OpenMP thread in any of them only contends, and spinning
# OpenMP threads burn the cores the others need (in-process trainings took 2-3x the CPU).
# Workflow runs cap every job at one thread (--max-threads in snakemake_cmd).
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def textured(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """A deterministic image with edges, gradients and noise (not trivially compressible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    layers = []
    for band in range(bands):
        wave = np.sin(xx / (7 + 3 * band)) * np.cos(yy / (11 + band)) * 70
        steps = ((xx // 17 + yy // 13 + band) % 2) * 60
        layers.append(100 + wave + steps + rng.normal(0, 12, (height, width)))
    return np.clip(np.stack(layers, axis=-1), 0, 255).astype(np.uint8)


def save_tiny_rrdbnet(
    path: Path, seed: int = 0, num_block: int = 1, scale: int = 4, num_feat: int = 8
) -> Path:
    """A small random RRDBNet in the official Real-ESRGAN .pth layout."""
    torch.manual_seed(seed)
    model = rrdbnet_class()(
        num_in_ch=3,
        num_out_ch=3,
        scale=scale,
        num_feat=num_feat,
        num_block=num_block,
        num_grow_ch=4,
    )
    # Random init outputs near zero; a bias on the last conv keeps outputs mid-range.
    with torch.no_grad():
        model.conv_last.bias.fill_(0.5)
    torch.save({"params_ema": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return save_tiny_rrdbnet(tmp_path_factory.mktemp("weights") / "tiny_rrdbnet.pth")


def synthetic_corpus(compositions: int, details: int, long_side: int) -> dict:
    """Config for a small synthetic corpus drawn by the workflow: one consented collection
    named 'ink'."""
    return {
        "synthetic": {"path": "corpus", "compositions": compositions, "details": details,
                      "long_side": long_side, "high_resolution": 0},
        "collections": {"ink": {"path": "corpus", "artist": "A", "licence": "CC0-1.0",
                                "consent": True}},
    }  # fmt: skip


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, configfiles, *args: str) -> list[str]:
    return [
        str(SNAKEMAKE),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        *[str(c) for c in configfiles],
        "--cores",
        "2",
        "--max-threads",
        "1",
        *args,
    ]


def run_snakemake(workdir: Path, configfiles, *args: str, check: bool = True, timeout=900):
    result = subprocess.run(
        snakemake_cmd(workdir, configfiles, *args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BLKASSIST_DEVICE": "cpu"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-8000:]}"
        )
    return result


def kill_mid_batch(
    workdir: Path,
    configfiles,
    progress: Path,
    markers: Path,
    batch: int,
    timeout: float,
    targets: tuple[str, ...] = (),
) -> set[int]:
    """Run the workflow (on `targets`, else its default) and SIGKILL it with its jobs once a
    tile job is caught halfway: its record in `progress` (batch-FIRST.tiles) lists some but
    not all of its `batch` tiles and `markers` holds no tiles-FIRST-*.done of it yet.
    Returns the tiles that job had finished; empty if none was caught before the run ended
    or `timeout` s passed."""
    process = subprocess.Popen(
        snakemake_cmd(workdir, configfiles, *targets),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill the jobs with it
        env={**os.environ, "BLKASSIST_DEVICE": "cpu"},
    )
    deadline, caught = time.monotonic() + timeout, set()
    try:
        while not caught and time.monotonic() < deadline and process.poll() is None:
            for record in progress.glob("batch-*.tiles") if progress.is_dir() else []:
                first = record.stem.split("-")[1]
                done = record.read_text().split()
                if 0 < len(done) < batch and not list(markers.glob(f"tiles-{first}-*.done")):
                    caught = {int(tile) for tile in done}
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the run may have ended by itself
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return caught


DEMO_CONFIG = REPO / "config" / "config.yaml"
DEMO_BUILD = pytest.StashKey[DemoBuild]()


def session_demo_build(config: pytest.Config) -> DemoBuild:
    """The session's demo build, in the folder all its processes share: the basetemp of the
    process that owns the session (a pytest-xdist worker's is a folder inside it)."""
    if DEMO_BUILD not in config.stash:
        basetemp = config._tmp_path_factory.getbasetemp()
        worker = hasattr(config, "workerinput")
        config.stash[DEMO_BUILD] = DemoBuild(basetemp.parent if worker else basetemp)
    return config.stash[DEMO_BUILD]


def start_demo_build(config: pytest.Config) -> None:
    build = session_demo_build(config)
    build.start(
        snakemake_cmd(build.workdir, [DEMO_CONFIG]), {**os.environ, "BLKASSIST_DEVICE": "cpu"}
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the pytest-xdist controller: start the demo build as soon as a worker has collected
    a reader of it (grouped into "demo" and named so by `name_group_in_id`)."""
    if any(nodeid.endswith("@demo") for nodeid in ids):
        start_demo_build(node.config)


def pytest_collection_finish(session):
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller starts it
    if any("demo_run" in item.fixturenames for item in session.items):
        start_demo_build(session.config)


def pytest_unconfigure(config):
    if DEMO_BUILD in config.stash:
        config.stash[DEMO_BUILD].stop()


@pytest.fixture(scope="session")
def demo_run(pytestconfig) -> Path:
    """`make demo` once per session (rule all on config/config.yaml): the folder it ran in.
    Tests that only read the demo's results share it; none may change it. The build starts
    in the background with the session (tests/demo_build.py); where nothing started it, the
    first reader builds it behind a file lock and the others read it."""
    build = session_demo_build(pytestconfig)
    if build.started.exists():
        return build.wait()
    return build.build_here(lambda workdir: run_snakemake(workdir, [DEMO_CONFIG], timeout=1800))


# Tests that share one expensive thing run on one pytest-xdist worker (`make test` runs
# `--dist loadgroup --no-loadscope-reorder`): the demo's readers, the vLLM server's users, the
# SLURM cluster's (one per machine), and each module whose module-scoped fixtures build models
# or run the workflow (once per worker otherwise). Serially these groups change nothing.
# The vLLM server's and the SLURM cluster's users share one group, "services": they spend
# minutes waiting (server starts, the scheduler's status polls), and on one worker those
# waits sit beside the other worker's tests and the demo build instead of idling both.
SHARED_GROUPS = {"demo_run": "demo", "vllm_server": "services", "cluster": "services"}
# The waiting group starts first, beside the background demo build; the demo's readers last.
STARTED_FIRST = ("services",)
STARTED_LAST = ("demo",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        group = next((g for f, g in SHARED_GROUPS.items() if f in item.fixturenames), None)
        if group is None and any(
            definitions[-1].scope == "module"
            for definitions in item._fixtureinfo.name2fixturedefs.values()
        ):
            group = item.module.__name__
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        if group == "demo" and not item.get_closest_marker("timeout"):
            # The first reader waits for the demo (its run has its own limit of 1800 s).
            item.add_marker(pytest.mark.timeout(1800 + 1200))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The waiting group first, so that its waits overlap the demo build and the other
        # worker's tests; then the other groups and the end-to-end runs, longest first, so
        # that no long run starts last; then the quick tests that fill the gaps; the demo's
        # readers last, when its build (started with the session) has finished.
        def rank(item):
            group = item.get_closest_marker("xdist_group")
            group = group.args[0] if group else None
            if group in STARTED_FIRST:
                return STARTED_FIRST.index(group)
            if group in STARTED_LAST:
                return len(STARTED_FIRST) + 2
            return len(STARTED_FIRST) + (0 if group or item.get_closest_marker("slow") else 1)

        items.sort(key=rank)
        if config.getvalue("loadgroup"):
            for item in items:
                name_group_in_id(item)


def name_group_in_id(item) -> None:
    """--dist loadgroup schedules by the "@GROUP" that pytest-xdist appends to each grouped
    test's id. pytest-xdist 3.8 writes it to `item._nodeid`, which pytest 9.2 no longer
    reads (a node's id is its `_id`): without this every test is scheduled alone."""
    from _pytest.nodeid import NodeId

    groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group")})
    if groups and not item.nodeid.endswith("@" + "_".join(groups)):
        item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")
