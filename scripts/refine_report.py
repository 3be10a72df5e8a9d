"""The mural's seam QA sheet and the refinement's provenance, pass by pass."""

from blkassist.refine.jobs import write_refine_report
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    write_refine_report(
        snakemake.wildcards.mural,
        snakemake.params.path,
        snakemake.params.stages,
        snakemake.output.seams_png,
        snakemake.output.seams_json,
        snakemake.output.provenance,
        snakemake.input.markers,
        snakemake.input.model,
    )
