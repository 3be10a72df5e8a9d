"""Create a refinement pass's empty window store and output canvas."""

from blkassist.refine.jobs import allocate_stage
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    allocate_stage(
        snakemake.params.geometry,
        snakemake.input.previous,
        snakemake.input.base,
        snakemake.params.folder,
        snakemake.output.allocation,
    )
