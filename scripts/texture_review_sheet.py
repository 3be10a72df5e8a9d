"""An HTML sheet of the texture crops: class, caption, source."""

from blkassist.runlog import rule_logging
from blkassist.texture.review import write_texture_review_sheet

with rule_logging(snakemake):
    write_texture_review_sheet(
        snakemake.wildcards.run, snakemake.input.plan, snakemake.input.index,
        snakemake.output.sheet,
    )  # fmt: skip
