"""A real vLLM server (CPU) with a tiny random VLM, driven over HTTP with urllib only."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blkassist.captions.server import auth_headers
from tests import tiny_vlm
from tests.vllm_fixture import vllm_server  # noqa: F401


def png_data_url(size: int = 64, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([xx * 4, yy * 4, rng.integers(0, 256, (size, size))], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body: dict, api_key: str | None, timeout: float = 120) -> dict:
    headers = {"Content-Type": "application/json", **auth_headers(api_key)}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def chat(server, images: list[str], max_tokens: int = 8, api_key: str | None = "server") -> dict:
    content = [{"type": "text", "text": "Write a one-line caption for this picture."}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return post(
        f"{server.base_url}/chat/completions",
        {
            "model": server.served_name,
            "messages": [
                {"role": "system", "content": "You caption artworks."},
                {"role": "user", "content": content},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.8,
        },
        server.api_key if api_key == "server" else api_key,
    )


def test_models_lists_served_name(vllm_server):  # noqa: F811
    assert vllm_server.models() == [vllm_server.served_name]


def test_requests_without_the_runs_api_key_are_refused(vllm_server):  # noqa: F811
    key = vllm_server.api_key
    assert key and len(key) >= 32
    for wrong in (None, "not-needed", key[:-1]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            chat(vllm_server, [], api_key=wrong)
        assert refused.value.code == 401, wrong
        request = urllib.request.Request(
            f"{vllm_server.base_url}/models", headers=auth_headers(wrong)
        )
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(request, timeout=10)
    assert chat(vllm_server, [])["choices"]  # with the key: served
    # The key reached the server through its environment: not in its command line or log.
    assert key not in " ".join(vllm_server.command)
    assert key not in vllm_server.log_path.read_text(errors="replace")
    cmdline = Path(f"/proc/{vllm_server.pid}/cmdline").read_bytes().decode(errors="replace")
    assert key not in cmdline


def test_chat_with_inline_image_reaches_the_model(vllm_server):  # noqa: F811
    text_only = chat(vllm_server, [])
    one = chat(vllm_server, [png_data_url(seed=1)])
    two = chat(vllm_server, [png_data_url(seed=1), png_data_url(seed=2)])

    for out in (text_only, one, two):
        assert out["choices"], out
        choice = out["choices"][0]
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        assert 1 <= out["usage"]["completion_tokens"] <= 8
    # The image became placeholder tokens: at least one tile of <image> tokens per image.
    per_image = one["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert per_image >= tiny_vlm.IMAGE_SEQ_LEN
    assert two["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"] == per_image


def test_undecodable_image_is_a_client_error(vllm_server):  # noqa: F811
    bad = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    with pytest.raises(urllib.error.HTTPError) as err:
        chat(vllm_server, [bad])
    assert 400 <= err.value.code < 500
    assert vllm_server.alive()
    assert chat(vllm_server, [png_data_url()])["choices"]  # still serving


def test_concurrent_requests(vllm_server):  # noqa: F811
    url = png_data_url(seed=3)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: chat(vllm_server, [url], max_tokens=16), range(8)))
    assert all(out["choices"] and out["usage"]["completion_tokens"] >= 1 for out in outs)
