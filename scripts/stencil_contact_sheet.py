"""A contact sheet of a Stencil set's categories over a checkerboard."""

import time

from blkassist.runlog import rule_logging
from blkassist.stencil.sheet import contact_sheet

with rule_logging(snakemake) as log:
    started = time.monotonic()
    rows = contact_sheet(snakemake.input.dataset, snakemake.output.sheet)
    log.info(
        "read %s; wrote %s (rows %s) in %.1f s",
        snakemake.input.dataset,
        snakemake.output.sheet,
        rows,
        time.monotonic() - started,
    )
