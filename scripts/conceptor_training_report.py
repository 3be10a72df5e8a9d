"""The report's training curves and validation table of one Conceptor LoRA run."""

import shutil
from pathlib import Path

from blkassist.fsutil import atomic_path, read_json
from blkassist.reporting import csv_table_page
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    run = snakemake.wildcards.run
    run_dir = Path(read_json(snakemake.input.model_card)["run"]["dir"])
    # The trainer plots its curves when the run ends; the report takes that plot.
    with atomic_path(snakemake.output.losses) as tmp:
        shutil.copyfile(run_dir / "losses.png", tmp)
    log.info("copied %s to %s", run_dir / "losses.png", snakemake.output.losses)
    csv_table_page(
        run_dir / "validation.csv",
        snakemake.output.validation,
        f"BLK-Conceptor run {run}: held-out loss",
        "Flow-matching loss on held-out images, for the EMA and the live weights.",
    )
