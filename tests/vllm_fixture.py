"""Session fixture: a real vLLM OpenAI-compatible server (CPU) with a tiny random VLM.

Use it from a test module with ``from tests.vllm_fixture import vllm_server  # noqa: F401``.
The server runs from the separate vLLM environment ``.venv-vllm/`` (``requirements/vllm.txt``;
override the interpreter with ``BLKASSIST_VLLM_PYTHON``); the tests that use it are skipped only
when that environment does not exist. Building the model takes ~5 s, the server ~25-70 s.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blkassist.captions.server import VllmServer, new_api_key, start_server

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("BLKASSIST_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
SERVED_NAME = "tiny-vlm"

# One server per session even if several test modules import the fixture (each import
# registers its own session-scoped fixture definition).
_shared: dict[str, VllmServer] = {}


def build_tiny_model(python: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny random VLM with the vLLM environment's interpreter (offline)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [str(python), "-m", "tests.tiny_vlm", str(out_dir), "--seed", str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"building the tiny VLM failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return out_dir


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory) -> Iterator[VllmServer]:
    server = _shared.get("server")
    if server is None or not server.alive():
        if not VLLM_PYTHON.exists():
            pytest.skip(
                f"no vLLM environment at {VLLM_PYTHON}: create it as requirements/vllm.txt says"
            )
        root = tmp_path_factory.mktemp("vllm")
        model_dir = build_tiny_model(VLLM_PYTHON, root / "tiny-vlm")
        server = start_server(
            VLLM_PYTHON,
            model_dir,
            served_name=SERVED_NAME,
            log_path=root / "vllm-server.log",
            enforce_eager=True,  # the model is tiny: compiling costs ~40 s and gains nothing
            omp_threads=1,  # more threads on 2 shared cores stall requests by ~1 s
            ready_timeout_s=600,
            api_key=new_api_key(),  # as the workflow starts it: requests need the key
        )
        atexit.register(server.stop)  # also on an interrupted session
        _shared["server"] = server
    yield server
    server.stop()
