"""A layered composition: .ora, .psd and a flattened .png from a background and assets."""

from blkassist.runlog import rule_logging
from blkassist.stencil_model.compose import compose

with rule_logging(snakemake):
    out = snakemake.output
    compose(
        snakemake.wildcards.composition, snakemake.input.background, snakemake.params.elements,
        {"ora": out.ora, "psd": out.psd, "png": out.png, "provenance": out.provenance},
        size=snakemake.params.size,
    )  # fmt: skip
