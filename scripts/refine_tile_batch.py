"""Refine one range of windows on a leased device, skipping windows already finished."""

from blkassist.refine.jobs import run_refine_batch
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
refine = snakemake.config["murals"][snakemake.wildcards.mural]["refine"]
with rule_logging(snakemake):
    run_refine_batch(
        allocation=snakemake.input.allocation,
        windows=(int(snakemake.wildcards.first), int(snakemake.wildcards.last) + 1),
        mural=snakemake.wildcards.mural,
        settings=snakemake.params.settings,
        model=snakemake.input.model,
        lora=snakemake.input.lora or None,
        scheduling=refine,
        gpu=snakemake.config["gpu"],
        threads=snakemake.threads,
        marker=snakemake.output.marker,
    )
