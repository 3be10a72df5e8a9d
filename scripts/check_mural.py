"""Refuse a mural in seconds if its model is unusable or its outputs cannot fit on disk."""

from blkassist.plan import check_mural
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    check_mural(
        snakemake.params.source, snakemake.params.weights, snakemake.params.model,
        snakemake.params.plan, snakemake.params.final_size, snakemake.params.replaced,
        snakemake.output.check, snakemake.config["canvases"]["temporary"],
    )  # fmt: skip
