"""Captioning against a real vLLM server on loopback (tiny random vision-language model).

A recording proxy sits between our client and the server so the tests can assert what
actually went over the wire: the few-shot prompt, the inline image, and no request at all
on a rerun.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from blkassist.captions.client import CaptionServerError, VllmCaptioner
from blkassist.captions.prompt import FewShotPrompt
from blkassist.captions.run import caption_collection
from blkassist.corpus.normalise import normalise_collection
from blkassist.demo.corpus import write_corpus
from tests.conftest import REPO, run_snakemake, synthetic_corpus, write_config
from tests.vllm_fixture import SERVED_NAME, vllm_server  # noqa: F401

pytestmark = pytest.mark.slow


class RecordingProxy:
    """Forwards HTTP requests to `upstream`, keeping each request's path and JSON body."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[str, dict | None, str | None]] = []  # path, body, auth
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, body: bytes | None):
                auth = self.headers.get("Authorization")
                proxy.requests.append((self.path, json.loads(body) if body else None, auth))
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=self.command, headers=headers,
                )  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=300) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as refused:  # relayed, e.g. 401 without the key
                    status, payload = refused.code, refused.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def chats(self) -> list[dict]:
        return [body for path, body, _ in self.requests if path.endswith("/chat/completions")]

    def close(self):
        self.server.shutdown()


KEY_VARIABLE = "BLKASSIST_TEST_VLLM_KEY"


@pytest.fixture
def proxy(vllm_server, monkeypatch):  # noqa: F811
    """The server as an external endpoint would be: its key in the environment variable
    that captions.vllm.api_key_env names."""
    monkeypatch.setenv(KEY_VARIABLE, vllm_server.api_key)
    upstream = vllm_server.base_url.removesuffix("/v1")
    recorder = RecordingProxy(upstream)
    yield recorder
    recorder.close()


def settings(tmp_path: Path, base_url: str) -> dict:
    prompt_dir = tmp_path / "prompt"
    if not prompt_dir.exists():
        shutil.copytree(REPO / "resources" / "captions", prompt_dir)
    return {
        "captioner": "vllm",
        "system_prompt": str(prompt_dir / "system_prompt.md"),
        "examples": str(prompt_dir / "examples.yaml"),
        "vllm": {"base_url": base_url + "/v1", "model": SERVED_NAME, "model_dir": None,
                 "python": "unused", "concurrency": 2, "timeout_s": 120, "retries": 2,
                 "max_tokens": 12, "min_tokens": 12, "temperature": 1.0, "startup_timeout_s": 60,
                 "image_long_side": 96, "api_key_env": KEY_VARIABLE},
    }  # fmt: skip


def test_captions_through_a_real_server(tmp_path, proxy):
    write_corpus(tmp_path / "corpus", seed=3, compositions=3, details=1, long_side=200,
                 high_resolution=0)  # fmt: skip
    work = tmp_path / "work"
    rows = normalise_collection("ink", tmp_path / "corpus", work / "images",
                                work / "manifest.tsv", work / "report.json", 10**8)  # fmt: skip
    config = settings(tmp_path, proxy.url)
    folder, index = tmp_path / "captions", str(tmp_path / "index.json")

    started = time.perf_counter()
    result = caption_collection(str(work / "manifest.tsv"), str(folder), index, config)
    elapsed = time.perf_counter() - started
    chats = proxy.chats()
    print(f"\n{len(chats)} captions in {elapsed:.1f} s: {len(chats) / elapsed:.2f} captions/s")
    assert len(chats) == len(rows) == 4
    system_prompt = (tmp_path / "prompt" / "system_prompt.md").read_text().split("\n")[0]
    sent_images = []
    for body in chats:
        assert body["model"] == SERVED_NAME and body["max_tokens"] == 12
        messages = body["messages"]
        assert messages[0]["role"] == "system" and system_prompt in messages[0]["content"]
        assert "Examples of good captions" in messages[0]["content"]
        url = messages[-1]["content"][0]["image_url"]["url"]
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert max(image.size) == 96
        sent_images.append(image.size)
    expected = sorted(
        tuple(round(d * 96 / max(r.width, r.height)) for d in (r.width, r.height)) for r in rows
    )
    assert sorted(sent_images) == expected  # each image went over the wire, reduced
    for row in rows:
        sidecar = folder / f"{row.id}.txt"
        assert sidecar.read_text().strip() == result[row.id]["caption"] != ""
    assert not list(folder.glob(".*.tmp-*"))  # written atomically: no leftovers

    proxy.requests.clear()
    again = caption_collection(str(work / "manifest.tsv"), str(folder), index, config)
    assert proxy.chats() == []  # a rerun makes no request
    assert {e["status"] for e in again.values()} == {"current"}

    edited = rows[0].id
    (folder / f"{edited}.txt").write_text("the artist's own caption\n")
    prompt = tmp_path / "prompt" / "system_prompt.md"
    prompt.write_text(prompt.read_text() + "\nMention the paper colour.\n")
    proxy.requests.clear()
    changed = caption_collection(str(work / "manifest.tsv"), str(folder), index, config)
    assert len(proxy.chats()) == 3  # the prompt changed: all but the edited one again
    assert changed[edited]["status"] == "edited"
    assert changed[edited]["caption"] == "the artist's own caption"
    # Every request carried the key from the environment; a wrong key is refused by name.
    assert {auth for _, _, auth in proxy.requests} == {f"Bearer {os.environ[KEY_VARIABLE]}"}
    prompt = FewShotPrompt.load(config["system_prompt"], config["examples"])
    wrong = VllmCaptioner(proxy.url + "/v1", SERVED_NAME, prompt, api_key="wrong", retries=0)
    with pytest.raises(CaptionServerError, match="refused the API key"):
        wrong.caption_all([rows[0].image], lambda i, text: None)


# With the other tests that wait on services: its minute of server start-up waits beside the
# other worker's tests (see SHARED_GROUPS in tests/conftest.py).
@pytest.mark.xdist_group("services")
def test_caption_job_starts_and_stops_its_own_server(tmp_path):
    from tests.vllm_fixture import VLLM_PYTHON, build_tiny_model

    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}")
    model_dir = build_tiny_model(VLLM_PYTHON, tmp_path / "tiny-vlm")
    config = {
        "corpus": synthetic_corpus(2, 0, 160),
        "captions": {"captioner": "vllm", "vllm": {
            "model_dir": str(model_dir), "python": str(VLLM_PYTHON), "model": "tiny-vlm",
            "max_tokens": 8, "min_tokens": 8, "temperature": 1.0, "image_long_side": 64}},
    }  # fmt: skip
    path = write_config(tmp_path, config)
    run_snakemake(tmp_path, [path], "captions/ink/index.json")
    index = json.loads((tmp_path / "captions/ink/index.json").read_text())
    assert len(index) == 2 and all(e["caption"] for e in index.values())
    server_log = (tmp_path / "logs/captions/ink.log.vllm-server").read_text()
    assert "Application startup complete" in server_log or "Uvicorn running" in server_log
    leftover = [p for p in Path("/proc").glob("[0-9]*") if _runs(p, str(model_dir))]
    assert leftover == []  # the job stopped the server it started


def _runs(proc: Path, needle: str) -> bool:
    try:
        return needle in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_texture_crop_captions_use_the_texture_prompt(tmp_path, proxy):
    from blkassist.config import validate_config
    from blkassist.texture.captions import caption_crops
    from blkassist.texture.select import texture_sources, write_crops

    write_corpus(tmp_path / "corpus", seed=5, compositions=2, details=0, long_side=256,
                 high_resolution=0)  # fmt: skip
    work = tmp_path / "work"
    normalise_collection("ink", tmp_path / "corpus", work / "images", work / "manifest.tsv",
                         work / "report.json", 10**8)  # fmt: skip
    config = {
        "corpus": {"collections": {"ink": {"path": "corpus", "artist": "A", "licence": "L",
                                           "consent": True}}},
        "texture": {"runs": {"t": {"collections": ["ink"], "dataset": {
            "crop_sizes": [64], "cell": 16, "count": 3, "min_count": 1}}}},
    }  # fmt: skip
    chosen = validate_config(config, REPO / "config" / "schema.yaml")["texture"]["runs"]["t"]
    plan_path = str(tmp_path / "crops.json")
    plan = write_crops("t", texture_sources([str(work / "manifest.tsv")]), chosen["dataset"],
                       str(tmp_path / "crops"), plan_path)  # fmt: skip
    captions = settings(tmp_path, proxy.url)
    prompt = tmp_path / "prompt" / "texture_system_prompt.md"
    examples = tmp_path / "prompt" / "texture_examples.yaml"
    folder, index = tmp_path / "captions", str(tmp_path / "index.json")

    result = caption_crops(plan_path, str(folder), index, captions, str(prompt), str(examples))
    chats = proxy.chats()
    assert len(chats) == len(plan["crops"]) == 3
    for body in chats:
        system = body["messages"][0]["content"]
        assert prompt.read_text().split("\n")[0] in system
        assert "- dense ink cross-hatching on warm paper" in system  # a texture example
    assert all(entry["caption"] for entry in result.values())

    proxy.requests.clear()
    edited = plan["crops"][0]["id"]
    (folder / f"{edited}.txt").write_text("my own: bristly hatching\n")
    prompt.write_text(prompt.read_text() + "\nName the paper colour.\n")
    changed = caption_crops(plan_path, str(folder), index, captions, str(prompt), str(examples))
    assert len(proxy.chats()) == 2  # the texture prompt changed: all but the edited crop
    assert changed[edited]["status"] == "edited"
    assert (folder / f"{edited}.txt").read_text() == "my own: bristly hatching\n"
