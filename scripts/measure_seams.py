"""Score every seam of one refinement pass; draw them over a thumbnail."""

from blkassist.refine.jobs import run_seam_qa
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run_seam_qa(
        snakemake.input.allocation,
        snakemake.output.report,
        snakemake.output.heatmap,
        snakemake.input.gate or None,
    )
