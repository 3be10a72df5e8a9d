"""An HTML contact sheet of a collection's captions for the artist to review."""

from blkassist.captions.review import write_review_sheet
from blkassist.fsutil import read_json
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    index = read_json(snakemake.input.index)
    write_review_sheet(index, snakemake.wildcards.collection, snakemake.output.sheet)
