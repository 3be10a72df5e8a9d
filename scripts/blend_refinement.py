"""Compose one range of output blocks from the refined windows covering them."""

from blkassist.refine.jobs import run_blend
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run_blend(
        snakemake.input.allocation,
        (int(snakemake.wildcards.first), int(snakemake.wildcards.last) + 1),
        snakemake.output.marker,
    )
