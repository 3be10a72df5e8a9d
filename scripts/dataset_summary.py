"""The report's page of one training set."""

from blkassist.reporting import dataset_summary_page
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    dataset_summary_page(snakemake.input.dataset, snakemake.output.page)
