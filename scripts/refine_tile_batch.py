"""Refine one range of windows on a leased device, skipping windows already finished."""

from blkassist.job_settings import JobSettings
from blkassist.refine.jobs import run_refine_batch
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
job_settings = JobSettings(snakemake.config)
with rule_logging(snakemake):
    run_refine_batch(
        allocation=snakemake.input.allocation,
        windows=(int(snakemake.wildcards.first), int(snakemake.wildcards.last) + 1),
        mural=snakemake.wildcards.mural,
        settings=snakemake.params.settings,
        model=snakemake.input.model,
        lora=snakemake.input.lora or None,
        tiles_per_forward=job_settings.refine(snakemake.wildcards.mural).tiles_per_forward,
        gpu=job_settings.gpu,
        threads=snakemake.threads,
        marker=snakemake.output.marker,
    )
