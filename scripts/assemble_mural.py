"""Write the final pyramidal BigTIFF and its provenance sidecar."""

from blkassist.assemble import assemble_mural
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    assemble_mural(
        allocation=snakemake.input.allocation,
        report=snakemake.input.report,
        weights=snakemake.input.weights or None,
        settings=snakemake.params.settings,
        final_size=tuple(snakemake.params.final_size),
        image=snakemake.output.image,
        provenance=snakemake.output.provenance,
        path=snakemake.params.path,
        refinement=snakemake.input.refinement or None,
        overlays=snakemake.params.overlays,
        licences=JobSettings(snakemake.config).licences.mural(
            snakemake.wildcards.mural, snakemake.params.path["path"] == "diffusion"
        ),
    )
