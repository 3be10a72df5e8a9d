"""Upscale again the SR tiles whose input a re-roll changed."""

from blkassist.config import mural_settings
from blkassist.refine.reroll_jobs import run_reroll_sr_tiles
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run_reroll_sr_tiles(
        allocation=snakemake.input.allocation,
        members=snakemake.params.job["members"],
        source=snakemake.params.job["source"],
        weights=snakemake.input.weights or None,
        tiles_per_forward=mural_settings(
            snakemake.config, snakemake.wildcards.mural
        ).tiles_per_forward,
        gpu=snakemake.config["gpu"],
        threads=snakemake.threads,
        marker=snakemake.output.marker,
    )
