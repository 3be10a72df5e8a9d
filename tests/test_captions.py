"""Captions the artist controls: sidecars, edits kept, regeneration only on change."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image

from blkassist.captions.client import CaptionServerError, VllmCaptioner
from blkassist.captions.prompt import FewShotPrompt
from blkassist.captions.review import write_review_sheet
from blkassist.captions.run import caption_collection
from blkassist.captions.sidecars import CaptionStore, Origin
from blkassist.corpus.normalise import normalise_collection
from blkassist.demo.corpus import write_corpus
from blkassist.errors import ConfigError
from tests.conftest import REPO

EMBEDDED = {
    "captioner": "embedded",
    "system_prompt": str(REPO / "resources/captions/system_prompt.md"),
    "examples": str(REPO / "resources/captions/examples.yaml"),
    "vllm": {},
}


@pytest.fixture
def manifest(tmp_path):
    write_corpus(tmp_path / "corpus", seed=5, compositions=3, details=2, long_side=256,
                 high_resolution=0)  # fmt: skip
    out = tmp_path / "work"
    normalise_collection("demo", tmp_path / "corpus", out / "images", out / "manifest.tsv",
                         out / "report.json", 10**8)  # fmt: skip
    return out / "manifest.tsv"


def test_embedded_captions_describe_taxonomy_and_marks(manifest, tmp_path):
    index = caption_collection(str(manifest), str(tmp_path / "cap"), str(tmp_path / "i.json"),
                               EMBEDDED)  # fmt: skip
    assert len(index) == 5 and {e["status"] for e in index.values()} == {"generated"}
    captions = [e["caption"] for e in index.values()]
    assert sum("detail close-up" in c for c in captions) == 2
    assert sum(c.startswith("a composition in pen and ink") for c in captions) == 3
    for image_id in index:
        assert (tmp_path / "cap" / f"{image_id}.txt").exists()
    again = caption_collection(str(manifest), str(tmp_path / "cap"), str(tmp_path / "i.json"),
                               EMBEDDED)  # fmt: skip
    assert {e["status"] for e in again.values()} == {"current"}
    assert [e["caption"] for e in again.values()] == captions  # deterministic


def test_artist_edit_survives_every_later_run(manifest, tmp_path):
    folder, index_path = tmp_path / "cap", str(tmp_path / "i.json")
    index = caption_collection(str(manifest), str(folder), index_path, EMBEDDED)
    edited_id = sorted(index)[0]
    (folder / f"{edited_id}.txt").write_text("my own words about this drawing\n")
    store = CaptionStore(folder)
    # Even a change of captioner (which regenerates the others) leaves the edit alone.
    for entry_id in index:
        store.state[entry_id]["origin"]["captioner"] = "something-older"
    store.save()
    result = caption_collection(str(manifest), str(folder), index_path, EMBEDDED)
    assert result[edited_id]["status"] == "edited"
    assert result[edited_id]["caption"] == "my own words about this drawing"
    others = {k: v["status"] for k, v in result.items() if k != edited_id}
    assert set(others.values()) == {"generated"}


def test_store_states_and_interrupted_rewrite(tmp_path):
    store = CaptionStore(tmp_path)
    origin = Origin("aa", "p1", "m1")
    assert store.status("x", origin) == "needed"
    store.write("x", "first  caption", origin)
    assert store.read("x") == "first caption"
    assert store.status("x", origin) == "current"
    assert store.status("x", Origin("bb", "p1", "m1")) == "needed"  # image changed
    assert store.status("x", Origin("aa", "p2", "m1")) == "needed"  # prompt changed
    assert store.status("x", Origin("aa", "p1", "m2")) == "needed"  # model changed
    (tmp_path / "y.txt").write_text("written by hand before any run")
    assert store.status("y", origin) == "edited"
    # A crash after recording a rewrite but before the new text landed: still ours.
    store.state["x"] = {"text_sha256": "0" * 64, "origin": origin.to_dict(),
                        "replacing": store.state["x"]["text_sha256"]}  # fmt: skip
    assert store.status("x", origin) == "needed"
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_few_shot_messages_carry_prompt_examples_and_image(tmp_path):
    Image.new("RGB", (40, 30), "white").save(tmp_path / "example.png")
    (tmp_path / "system.md").write_text("Describe ink drawings.")
    (tmp_path / "examples.yaml").write_text(
        "- caption: text only example\n- caption: pictured example\n  image: example.png\n"
    )
    prompt = FewShotPrompt.load(tmp_path / "system.md", tmp_path / "examples.yaml")
    messages = prompt.messages("data:image/png;base64,AAAA")
    assert messages[0]["role"] == "system"
    assert "Describe ink drawings." in messages[0]["content"]
    assert "text only example" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user"]
    example_image = messages[1]["content"][0]["image_url"]["url"]
    assert base64.b64decode(example_image.split(",", 1)[1])[:4] == b"\x89PNG"
    assert messages[2]["content"] == "pictured example"
    assert messages[3]["content"][0]["image_url"]["url"] == "data:image/png;base64,AAAA"
    before = prompt.digest
    (tmp_path / "system.md").write_text("Describe ink drawings carefully.")
    assert FewShotPrompt.load(tmp_path / "system.md", tmp_path / "examples.yaml").digest != before


def test_prompt_files_missing_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.md: not found; fix captions\.system_prompt"):
        FewShotPrompt.load(tmp_path / "nope.md", tmp_path / "examples.yaml")


def test_unreachable_server_is_a_clear_error(manifest, tmp_path):
    prompt = FewShotPrompt.load(EMBEDDED["system_prompt"], EMBEDDED["examples"])
    captioner = VllmCaptioner("http://127.0.0.1:9/v1", "tiny-vlm", prompt, retries=0,
                              timeout_s=5)  # fmt: skip
    with pytest.raises(
        CaptionServerError,
        match=r"cannot reach the captioning server at "
        r"http://127\.0\.0\.1:9/v1.*captions\.vllm",
    ):
        captioner.caption_all(["unused.png"], lambda i, t: None)


def test_an_endpoints_key_comes_from_the_environment_variable_named(monkeypatch):
    from blkassist.captions.run import endpoint_key

    settings = {"api_key_env": "BLKASSIST_TEST_KEY"}
    monkeypatch.delenv("BLKASSIST_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"api_key_env: the environment variable "
                       r"BLKASSIST_TEST_KEY is not set"):  # fmt: skip
        endpoint_key(settings)
    monkeypatch.setenv("BLKASSIST_TEST_KEY", "s3cret")
    assert endpoint_key(settings) == "s3cret"
    assert endpoint_key({"api_key_env": None}) is None


def test_the_config_holds_no_key_only_the_variables_name(tmp_path):
    from blkassist.config import validate_config

    schema = REPO / "config" / "schema.yaml"
    with pytest.raises(ConfigError, match="api_key"):
        validate_config({"captions": {"vllm": {"api_key": "s3cret"}}}, schema)
    with pytest.raises(ConfigError, match="api_key_env"):
        validate_config({"captions": {"vllm": {"api_key_env": "not a name"}}}, schema)
    config = {"captions": {"vllm": {"api_key_env": "STUDIO_VLLM_KEY"}}}
    validate_config(config, schema)
    assert config["captions"]["vllm"]["api_key_env"] == "STUDIO_VLLM_KEY"


def test_review_sheet_shows_thumbnails_captions_and_edits(manifest, tmp_path):
    index = caption_collection(str(manifest), str(tmp_path / "cap"), str(tmp_path / "i.json"),
                               EMBEDDED)  # fmt: skip
    first = sorted(index)[0]
    index[first]["status"] = "edited"
    write_review_sheet(index, "demo", str(tmp_path / "sheet.html"))
    page = (tmp_path / "sheet.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 5
    assert page.count('class="tag edited"') == 1
    for entry in index.values():
        assert entry["caption"] in page
    json.dumps(index)  # the index stays serialisable
