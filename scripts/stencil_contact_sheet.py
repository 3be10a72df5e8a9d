"""A contact sheet of a Stencil set's categories over a checkerboard."""

from blkassist.runlog import rule_logging
from blkassist.stencil.sheet import contact_sheet

with rule_logging(snakemake) as log:
    rows = contact_sheet(snakemake.input.dataset, snakemake.output.sheet)
    log.info(
        "read %s; wrote %s with rows %s", snakemake.input.dataset, snakemake.output.sheet, rows
    )
