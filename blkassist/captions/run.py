"""Caption a collection: decide what needs a caption, get it, keep the artist's edits."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
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


def endpoint_key(settings: dict) -> str | None:
    """The key of a running server, from the environment variable the config names (the
    key itself never sits in a config file); None when none is named."""
    name = settings["api_key_env"]
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise ConfigError(
            f"captions.vllm.api_key_env: the environment variable {name} is not set (or "
            f"empty); export the server's API key as {name} before running, or set "
            "api_key_env to null for a server that takes no key."
        )
    return key


@contextmanager
def vllm_endpoint(settings: dict, log_path: Path, lock_dir: str | None = None):
    """(base URL, API key) of the server: the configured one with the key from its
    environment variable, or one started (and stopped) here with a random key, on a GPU
    leased from `lock_dir` (the CPU where there is none)."""
    if settings["base_url"]:
        yield settings["base_url"], endpoint_key(settings)
        return
    if not settings["model_dir"]:
        raise ConfigError(
            "captions.vllm: give base_url (a running server) or model_dir (a local model "
            "folder for the workflow to serve)"
        )
    from blkassist.captions.server import new_api_key, start_server
    from blkassist.devices import lease_device

    api_key = new_api_key()  # this run's only: other local users cannot use the server
    with lease_device(lock_dir) if lock_dir else nullcontext():  # the server inherits it
        server = start_server(
            python=Path(settings["python"]),
            model_dir=Path(settings["model_dir"]),
            served_name=settings["model"],
            log_path=log_path,
            ready_timeout_s=settings["startup_timeout_s"],
            dtype=settings["dtype"],
            max_model_len=settings["max_model_len"],
            kv_cache_mib=settings["kv_cache_mib"],
            extra_args=settings["extra_args"],
            api_key=api_key,
        )
        try:
            yield server.base_url, api_key
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
    lock_dir: str | None = None,
) -> dict:
    jobs = [
        CaptionJob(row.id, row.image, row.sha256, row.source,
                   partial(embedded.caption, row.image, row.taxonomy, row.collection,
                           description))
        for row in read_manifest(manifest)
    ]  # fmt: skip
    return caption_images(
        jobs, captions_dir, index, settings, settings["system_prompt"], settings["examples"],
        EMBEDDED_VERSION, server_log, lock_dir,
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
    lock_dir: str | None = None,
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
        server_log = Path(server_log or Path(captions_dir) / "vllm-server.log")
        with vllm_endpoint(vllm, server_log, lock_dir) as (url, api_key):
            captioner_client = VllmCaptioner(
                url, vllm["model"], prompt, api_key=api_key, concurrency=vllm["concurrency"],
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
