"""Texture-centric captions for the crops; the artist's edited sidecars are kept."""

from blkassist.runlog import rule_logging
from blkassist.texture.captions import caption_crops

with rule_logging(snakemake):
    caption_crops(
        snakemake.input.plan, snakemake.params.folder, snakemake.output.index,
        snakemake.params.captions, snakemake.input.system_prompt, snakemake.input.examples,
        server_log=snakemake.log[0] + ".vllm-server",
    )  # fmt: skip
