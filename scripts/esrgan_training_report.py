"""The report's training curves and validation table of one Real-ESRGAN fine-tune."""

from pathlib import Path

from blkassist.fsutil import read_json
from blkassist.reporting import csv_table_page, loss_curves
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run = snakemake.wildcards.run
    digest = read_json(snakemake.input.model_card)["recipe_digest"]
    loss_curves(
        Path(snakemake.params.run_dir) / digest / "losses.csv",
        snakemake.output.losses,
        f"Real-ESRGAN fine-tune {run}: training losses",
    )
    csv_table_page(
        snakemake.input.validation_csv,
        snakemake.output.validation,
        f"Real-ESRGAN fine-tune {run}: validation",
        "Held-out crops at each validation: bicubic baseline, then the EMA generator.",
    )
