"""Caption a collection: decide what needs a caption, get it, keep the artist's edits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
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


@dataclass(frozen=True)
class CaptionJob:
    """One image to caption: where it is, what its pixels are, how the built-in captioner
    describes it."""

    id: str
    image: str
    image_sha256: str
    source: str
    embedded: Callable[[], str]


def caption_collection(
    manifest: str,
    captions_dir: str,
    index: str,
    settings: dict,
    description: str = "",
    server_log: str | None = None,
) -> dict:
    jobs = [
        CaptionJob(row.id, row.image, row.sha256, row.source,
                   partial(embedded.caption, row.image, row.taxonomy, row.collection,
                           description))
        for row in read_manifest(manifest)
    ]  # fmt: skip
    return caption_images(
        jobs, captions_dir, index, settings, settings["system_prompt"], settings["examples"],
        EMBEDDED_VERSION, server_log,
    )  # fmt: skip


def caption_images(
    jobs: list[CaptionJob],
    captions_dir: str,
    index: str,
    settings: dict,
    system_prompt: str | None,
    examples: str | None,
    embedded_version: str,
    server_log: str | None = None,
) -> dict:
    """Caption what needs it (new, or its image/prompt/captioner changed), keep the rest.

    `settings` is the captions block (captioner, vllm); the prompt files are passed apart
    so that another set of images (texture crops) can use its own prompt.
    """
    store = CaptionStore(captions_dir)
    if settings["captioner"] == "embedded":
        digest, captioner = "none", embedded_version
    else:
        prompt = FewShotPrompt.load(system_prompt, examples)
        digest, captioner = prompt.digest, f"vllm:{settings['vllm']['model']}"
    origins = {job.id: Origin(job.image_sha256, digest, captioner) for job in jobs}
    status = {job.id: store.status(job.id, origins[job.id]) for job in jobs}
    needed = [job for job in jobs if status[job.id] == "needed"]
    log.info(
        "%d images: %d need a caption, %d edited by the artist (kept), %d current",
        len(jobs),
        len(needed),
        sum(s == "edited" for s in status.values()),
        sum(s == "current" for s in status.values()),
    )
    if needed and settings["captioner"] == "embedded":
        for job in needed:
            store.write(job.id, job.embedded(), origins[job.id])
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
                [job.image for job in needed],
                lambda i, text: store.write(needed[i].id, text, origins[needed[i].id]),
            )
    for job in needed:
        status[job.id] = "generated"
    result = {
        job.id: {
            "status": status[job.id],
            "caption": store.read(job.id),
            "sidecar": str(store.sidecar(job.id)),
            "image": job.image,
            "source": job.source,
        }
        for job in jobs
    }
    write_json(index, result)
    return result
