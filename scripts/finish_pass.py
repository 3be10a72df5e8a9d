"""Check that every tile of a pass is finished before anything reads its canvas."""

from blkassist.runlog import rule_logging
from blkassist.sr.passes import finish_pass

with rule_logging(snakemake):
    finish_pass(snakemake.input.allocation, snakemake.output.complete)
