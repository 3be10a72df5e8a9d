"""Compose one batch of output blocks from the refined windows covering them."""

from blkassist.refine.jobs import run_blend
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
refine = snakemake.config["murals"][snakemake.wildcards.mural]["refine"]
with rule_logging(snakemake):
    run_blend(
        snakemake.input.allocation,
        int(snakemake.wildcards.blend),
        refine,
        snakemake.output.marker,
    )
