"""Copy the artist's chosen concept sketch out as a mural source, with its provenance."""

from blkassist.flux.picks import pick_concept
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    pick = snakemake.params.pick
    pick_concept(
        snakemake.input.index, pick["prompt"], pick["seed"], snakemake.output.image,
        snakemake.output.provenance,
    )  # fmt: skip
