"""Refuse a mural in seconds if its model is unusable or its outputs cannot fit on disk."""

from blkassist.job_settings import JobSettings
from blkassist.plan import check_mural
from blkassist.refine.settings import refine_stages
from blkassist.runlog import rule_logging
from blkassist.tiling import PassPlan

with rule_logging(snakemake):
    settings = JobSettings(snakemake.config)
    sr_outputs = [
        (plan.output_width, plan.output_height)
        for plan in (PassPlan(**fields) for fields in snakemake.params.plan)
    ]
    stages = refine_stages(
        settings.refine(snakemake.wildcards.mural), sr_outputs, snakemake.params.final_size,
        snakemake.params.refine_model,
    )  # fmt: skip
    check_mural(
        snakemake.params.source, snakemake.params.weights, snakemake.params.model,
        snakemake.params.plan, snakemake.params.final_size, snakemake.params.replaced,
        snakemake.output.check, settings.canvases.temporary, stages,
    )  # fmt: skip
