"""Texture-centric captions for the chosen crops, in the same sidecar store as the corpus
captions (captions/texture-RUN/CROP.txt): an artist's edit is never overwritten."""

from __future__ import annotations

from functools import partial

from blkassist.captions.embedded import texture_caption
from blkassist.captions.run import CaptionJob, caption_images
from blkassist.fsutil import read_json

EMBEDDED_TEXTURE_VERSION = "embedded-texture-1"  # bump when texture_caption's output changes


def crop_source(crop: dict, source: str) -> str:
    """Where a crop was cut, for people: the scan and the box."""
    x0, y0, x1, y1 = crop["box"]
    return f"{source} [{x0},{y0} {x1 - x0}x{y1 - y0}]"


def caption_crops(
    plan_path: str,
    captions_dir: str,
    index: str,
    captions: dict,
    system_prompt: str | None,
    examples: str | None,
    server_log: str | None = None,
    lock_dir: str | None = None,
) -> dict:
    """Caption every crop of the plan that needs it. `captions` is the workflow's captions
    block (embedded or vllm); the prompt files are the texture prompt (vllm only)."""
    plan = read_json(plan_path)
    scans = {source["id"]: source["source"] for source in plan["sources"]}
    jobs = [
        CaptionJob(crop["id"], crop["image"], crop["crop_sha256"],
                   crop_source(crop, scans[crop["source_id"]]),
                   partial(texture_caption, crop["image"], crop["primitive"],
                           crop["orientation"]))
        for crop in plan["crops"]
    ]  # fmt: skip
    return caption_images(jobs, captions_dir, index, captions, system_prompt, examples,
                          EMBEDDED_TEXTURE_VERSION, server_log, lock_dir)  # fmt: skip
