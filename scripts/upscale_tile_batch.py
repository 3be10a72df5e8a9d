"""Upscale one range of tiles on a leased device, skipping tiles already finished.

Scheduling knobs come from the config here, not from params, so changing them never makes
Snakemake redo finished work.
"""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.sr.passes import run_tile_batch

settings = JobSettings(snakemake.config)
with rule_logging(snakemake):
    gpu = settings.gpu
    first, last = int(snakemake.wildcards.first), int(snakemake.wildcards.last)
    run_tile_batch(
        allocation=snakemake.input.allocation,
        tiles=(first, last + 1),
        weights=snakemake.input.weights or None,
        tiles_per_forward=settings.mural(snakemake.wildcards.mural).tiles_per_forward,
        lock_dir=gpu.lock_dir,
        threads=snakemake.threads,
        marker=snakemake.output.marker,
        batch=first,
        devices=gpu.memory,
    )
