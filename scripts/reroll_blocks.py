"""Blend a pass's blocks again with its re-rolled windows in their slots."""

from blkassist.refine.reroll_jobs import run_reroll_blocks
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run_reroll_blocks(snakemake.input.allocation, snakemake.params.members, snakemake.output.marker)
