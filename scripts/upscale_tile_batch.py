"""Upscale one batch of tiles on a leased device, skipping tiles already finished."""

from blkassist.runlog import rule_logging
from blkassist.sr.passes import run_tile_batch

with rule_logging(snakemake):
    run_tile_batch(
        allocation=snakemake.input.allocation,
        batch=int(snakemake.wildcards.batch),
        model=snakemake.params.model,
        weights=snakemake.input.weights or None,
        pad=snakemake.params.pad,
        tiles_per_forward=snakemake.params.tiles_per_forward,
        precision=snakemake.params.precision,
        lock_dir=snakemake.params.lock_dir,
        threads=snakemake.threads,
        marker=snakemake.output.marker,
    )
