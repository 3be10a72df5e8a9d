"""Upscale again the SR tiles whose input a re-roll changed."""

from blkassist.job_settings import JobSettings
from blkassist.refine.reroll_jobs import run_reroll_sr_tiles
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
settings = JobSettings(snakemake.config)
with rule_logging(snakemake):
    run_reroll_sr_tiles(
        allocation=snakemake.input.allocation,
        members=snakemake.params.job["members"],
        source=snakemake.params.job["source"],
        weights=snakemake.input.weights or None,
        tiles_per_forward=settings.mural(snakemake.wildcards.mural).tiles_per_forward,
        gpu=settings.gpu,
        threads=snakemake.threads,
        marker=snakemake.output.marker,
    )
