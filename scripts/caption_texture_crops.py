"""Texture-centric captions for the crops; the artist's edited sidecars are kept."""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.texture.captions import caption_crops

with rule_logging(snakemake):
    settings = JobSettings(snakemake.config)
    prompt = snakemake.input.get("system_prompt"), snakemake.input.get("examples")
    caption_crops(
        snakemake.input.plan, snakemake.params.folder, snakemake.output.index,
        settings.captions.block(), *prompt, server_log=snakemake.log[0] + ".vllm-server",
        lock_dir=settings.gpu.lock_dir,
    )  # fmt: skip
