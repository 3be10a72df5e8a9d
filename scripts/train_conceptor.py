"""Train (or resume) the Conceptor LoRA on a training set and export the chosen weights."""

from pathlib import Path

from blkassist import licences
from blkassist.flux.train import train_run
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    dataset = Path(snakemake.input.dataset)
    validation = dataset / "validation"
    train_run(
        snakemake.params.recipe, snakemake.input.model, str(dataset / "train"),
        snakemake.params.run_dir, snakemake.output.lora, snakemake.output.model_card,
        snakemake.params.lock_dir, snakemake.threads,
        validation_dir=str(validation) if (validation / "metadata.jsonl").exists() else None,
        chosen_step=snakemake.params.chosen_step,
        key=f"conceptor.runs.{snakemake.wildcards.run}.recipe",
        progress=snakemake.config["progress"],
        licences=[licences.trained_lora(snakemake.config, "conceptor", snakemake.wildcards.run)],
    )  # fmt: skip
