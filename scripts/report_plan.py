"""Write the mural's planning report: tiles, jobs, disk per canvas and result, GPU-hours."""

from blkassist.fsutil import write_json
from blkassist.plan import plan_line
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    write_json(snakemake.output.plan, snakemake.params.report)
    log.info("%s", plan_line(snakemake.wildcards.mural, snakemake.params.report))
