"""Start and stop a vLLM OpenAI-compatible server (CPU backend) as a child process.

Used by tests and by the workflow. Standard library only: this module is imported from the main
virtual environment, while the server itself runs with the vLLM environment's interpreter
(``.venv-vllm/bin/python``), which is passed in as ``python``.

    server = start_server(Path(".venv-vllm/bin/python"), model_dir, log_path=Path("vllm.log"))
    try:
        ...  # OpenAI API at server.base_url, model name server.served_name
    finally:
        server.stop()

With ``api_key`` (``new_api_key()`` per run) every request must carry
``Authorization: Bearer KEY``: other users of a shared node cannot use the server. The key
reaches the server through its environment (VLLM_API_KEY), never its command line, which
any local user can read in /proc and which is written to the server's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Environment for the server: never touch the hub, keep the CPU KV cache small, and do not
# report usage anywhere.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # share the cores with other work, no pinning
    "TOKENIZERS_PARALLELISM": "false",
}

DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_MAX_NUM_SEQS = 16
DEFAULT_KV_CACHE_MIB = 256  # plenty for the tiny test model; pass more for a real one
# Set in the caller's environment, the first would override --kv-cache-memory-bytes, the
# second would make the server demand a key this module does not know.
DROPPED_ENV = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_API_KEY")
LOG_TAIL_LINES = 50


class VllmServerError(RuntimeError):
    """The vLLM server did not start (the message holds the end of its log)."""


def new_api_key() -> str:
    """A random key for one server run."""
    return secrets.token_urlsafe(32)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class VllmServer:
    """A running server; ``stop()`` ends its whole process group."""

    process: subprocess.Popen
    host: str
    port: int
    served_name: str
    model_dir: Path
    log_path: Path
    command: list[str] = field(default_factory=list)
    ready_after_s: float | None = None
    api_key: str | None = field(default=None, repr=False)

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI API base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def models(self, timeout_s: float = 5.0) -> list[str]:
        """Model ids listed by ``GET /v1/models``."""
        request = urllib.request.Request(
            f"{self.base_url}/models", headers=auth_headers(self.api_key)
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            payload = json.load(resp)
        return [m["id"] for m in payload.get("data", [])]

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``; return the exit code.

        Idempotent. The engine core and worker processes are in the same group and are ended
        with it, even when the API server process exits first.
        """
        pgid = self.process.pid  # the child leads its own group (start_new_session)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _group_alive(pgid) and time.monotonic() < deadline:
                self.process.poll()  # reap the leader as soon as it exits
                time.sleep(0.2)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        return self.process.returncode

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of process group ``pgid`` exists (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def server_command(
    python: Path,
    model_dir: Path,
    host: str,
    port: int,
    served_name: str,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    limit_images: int = 4,
    dtype: str = "float32",
    kv_cache_mib: int = DEFAULT_KV_CACHE_MIB,
    enforce_eager: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of the server (vLLM 0.32 CPU)."""
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        "--limit-mm-per-prompt",
        json.dumps({"image": limit_images}),
        "--kv-cache-memory-bytes",
        str(kv_cache_mib * 2**20),
        "--disable-log-stats",
        *(["--enforce-eager"] if enforce_eager else []),
        *extra_args,
    ]


def _ready(url: str, served_name: str, api_key: str | None) -> bool:
    try:
        request = urllib.request.Request(url, headers=auth_headers(api_key))
        with urllib.request.urlopen(request, timeout=5) as resp:
            payload = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(m.get("id") == served_name for m in payload.get("data", []))


def start_server(
    python: Path,
    model_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    served_name: str = "tiny-vlm",
    *,
    log_path: Path,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 600.0,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    limit_images: int = 4,
    dtype: str = "float32",
    kv_cache_mib: int = DEFAULT_KV_CACHE_MIB,
    enforce_eager: bool = False,
    omp_threads: int | None = None,
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> VllmServer:
    """Launch the server, wait until ``GET /v1/models`` lists ``served_name``, return it.

    ``python`` is the interpreter of the vLLM environment. The server runs in its own process
    group with stdout and stderr in ``log_path``; ``env`` entries override ``SERVER_ENV``.
    ``omp_threads`` sets OMP_NUM_THREADS of the server: 1 suits a tiny model on a shared
    machine (2 OpenMP threads on 2 busy cores stalled requests for ~1 s at a time).
    ``enforce_eager`` skips torch.compile (inductor): faster start, no compile cache needed.
    ``api_key`` makes the server refuse requests without it (see the module docstring).
    Raises ``VllmServerError`` (with the last log lines) if the process exits or
    ``ready_timeout_s`` passes first; the process group is stopped in both cases.
    """
    if not Path(python).exists():
        raise VllmServerError(f"no vLLM interpreter at {python}")
    if not (Path(model_dir) / "config.json").is_file():
        raise VllmServerError(f"{model_dir} is not a model folder (no config.json)")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    child_env.update(SERVER_ENV)
    if omp_threads is not None:
        child_env["OMP_NUM_THREADS"] = str(omp_threads)
    child_env.update(env or {})
    if api_key:
        child_env["VLLM_API_KEY"] = api_key
    # A port picked here may be taken by someone else before the server binds it: then the
    # server fails within seconds with EADDRINUSE, and another free port is tried.
    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        this_port = free_port(host) if port is None else port
        cmd = server_command(
            python,
            model_dir,
            host,
            this_port,
            served_name,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            limit_images=limit_images,
            dtype=dtype,
            kv_cache_mib=kv_cache_mib,
            enforce_eager=enforce_eager,
            extra_args=extra_args,
        )
        log_start = log_path.stat().st_size if log_path.exists() else 0
        try:
            return _launch(
                cmd, child_env, host, this_port, served_name, model_dir, log_path, ready_timeout_s,
                api_key,
            )  # fmt: skip
        except VllmServerError:
            new_log = log_path.read_bytes()[log_start:].decode(errors="replace")
            if attempt == attempts or "Address already in use" not in new_log:
                raise
    raise AssertionError("unreachable")


def _launch(
    cmd: list[str],
    env: Mapping[str, str],
    host: str,
    port: int,
    served_name: str,
    model_dir: Path,
    log_path: Path,
    ready_timeout_s: float,
    api_key: str | None,
) -> VllmServer:
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    server = VllmServer(
        process, host, port, served_name, Path(model_dir), log_path, cmd, api_key=api_key
    )
    url = f"{server.base_url}/models"
    while True:
        code = process.poll()
        if code is None and _ready(url, served_name, api_key) and process.poll() is None:
            server.ready_after_s = time.monotonic() - t0
            return server
        elapsed = time.monotonic() - t0
        if code is not None or elapsed > ready_timeout_s:
            server.stop()
            why = (
                f"exited with code {code}"
                if code is not None
                else f"not ready after {ready_timeout_s:.0f} s"
            )
            raise VllmServerError(
                f"vLLM server {why} (model {model_dir}, {host}:{port}); "
                f"last {LOG_TAIL_LINES} lines of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(1.0)
