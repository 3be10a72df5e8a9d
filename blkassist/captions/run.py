"""Caption a collection: decide what needs a caption, get it, keep the artist's edits."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from blkassist.captions import embedded
from blkassist.captions.prompt import FewShotPrompt
from blkassist.captions.sidecars import CaptionStore, Origin
from blkassist.corpus.normalise import read_manifest
from blkassist.errors import ConfigError
from blkassist.fsutil import write_json

log = logging.getLogger(__name__)

EMBEDDED_VERSION = "embedded-1"  # bump when the built-in captioner's output changes


@contextmanager
def vllm_endpoint(settings: dict, log_path: Path):
    """The server's base URL: the configured one, or one started (and stopped) here."""
    if settings["base_url"]:
        yield settings["base_url"]
        return
    if not settings["model_dir"]:
        raise ConfigError(
            "captions.vllm: give base_url (a running server) or model_dir (a local model "
            "folder for the workflow to serve)"
        )
    from blkassist.captions.server import start_server

    server = start_server(
        python=Path(settings["python"]),
        model_dir=Path(settings["model_dir"]),
        served_name=settings["model"],
        log_path=log_path,
        ready_timeout_s=settings["startup_timeout_s"],
    )
    try:
        yield server.base_url
    finally:
        server.stop()


def caption_collection(
    manifest: str,
    captions_dir: str,
    index: str,
    settings: dict,
    description: str = "",
    server_log: str | None = None,
) -> dict:
    rows = read_manifest(manifest)
    store = CaptionStore(captions_dir)
    if settings["captioner"] == "embedded":
        digest, captioner = "none", EMBEDDED_VERSION
    else:
        prompt = FewShotPrompt.load(settings["system_prompt"], settings["examples"])
        digest, captioner = prompt.digest, f"vllm:{settings['vllm']['model']}"
    origins = {row.id: Origin(row.sha256, digest, captioner) for row in rows}
    status = {row.id: store.status(row.id, origins[row.id]) for row in rows}
    needed = [row for row in rows if status[row.id] == "needed"]
    log.info(
        "%d images: %d need a caption, %d edited by the artist (kept), %d current",
        len(rows),
        len(needed),
        sum(s == "edited" for s in status.values()),
        sum(s == "current" for s in status.values()),
    )
    if needed and settings["captioner"] == "embedded":
        for row in needed:
            text = embedded.caption(row.image, row.taxonomy, row.collection, description)
            store.write(row.id, text, origins[row.id])
    elif needed:
        from blkassist.captions.client import VllmCaptioner

        vllm = settings["vllm"]
        with vllm_endpoint(vllm, Path(server_log or Path(captions_dir) / "vllm-server.log")) as url:
            captioner_client = VllmCaptioner(
                url, vllm["model"], prompt, concurrency=vllm["concurrency"],
                timeout_s=vllm["timeout_s"], retries=vllm["retries"],
                max_tokens=vllm["max_tokens"], min_tokens=vllm["min_tokens"],
                temperature=vllm["temperature"],
                image_long_side=vllm["image_long_side"],
            )  # fmt: skip
            captioner_client.caption_all(
                [row.image for row in needed],
                lambda i, text: store.write(needed[i].id, text, origins[needed[i].id]),
            )
    for row in needed:
        status[row.id] = "generated"
    result = {
        row.id: {
            "status": status[row.id],
            "caption": store.read(row.id),
            "sidecar": str(store.sidecar(row.id)),
            "image": row.image,
            "source": row.source,
        }
        for row in rows
    }
    write_json(index, result)
    return result
