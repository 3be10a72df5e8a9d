"""Create the empty output canvas of one pass; tile batches fill it."""

from blkassist.runlog import rule_logging
from blkassist.sr.passes import allocate_pass

with rule_logging(snakemake):
    allocate_pass(
        snakemake.params.plan,
        snakemake.input.get("allocation") or snakemake.input.canvas,
        snakemake.output.canvas,
        snakemake.params.progress,
        snakemake.output.allocation,
        snakemake.params.upscale,
        snakemake.params.rerolls,
    )
