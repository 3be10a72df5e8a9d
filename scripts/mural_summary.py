"""The report's thumbnail and provenance page of one mural."""

from blkassist.runlog import rule_logging
from blkassist.viewer import mural_summary

with rule_logging(snakemake):
    mural_summary(
        image=snakemake.input.image,
        provenance=snakemake.input.provenance,
        thumbnail=snakemake.output.thumbnail,
        page=snakemake.output.provenance,
        long_side=snakemake.params.long_side,
    )
