"""Refuse a mural in seconds if its model is unusable or its outputs cannot fit on disk."""

from blkassist.plan import check_mural
from blkassist.refine.settings import mural_refine_stages
from blkassist.runlog import rule_logging
from blkassist.tiling import PassPlan

with rule_logging(snakemake):
    sr_outputs = [
        (plan.output_width, plan.output_height)
        for plan in (PassPlan(**fields) for fields in snakemake.params.plan)
    ]
    stages = mural_refine_stages(
        snakemake.config, snakemake.wildcards.mural, sr_outputs, snakemake.params.final_size,
        snakemake.params.refine_model,
    )  # fmt: skip
    check_mural(
        snakemake.params.source, snakemake.params.weights, snakemake.params.model,
        snakemake.params.plan, snakemake.params.final_size, snakemake.params.replaced,
        snakemake.output.check, snakemake.config["canvases"]["temporary"], stages,
    )  # fmt: skip
