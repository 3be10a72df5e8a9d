"""Train (or resume) the Conceptor LoRA on a training set and export the chosen weights."""

from pathlib import Path

from blkassist.flux.train import train_run
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    settings = JobSettings(snakemake.config)
    dataset = Path(snakemake.input.dataset)
    validation = dataset / "validation"
    train_run(
        snakemake.params.recipe, snakemake.input.model, str(dataset / "train"),
        snakemake.params.run_dir, snakemake.output.lora, snakemake.output.model_card,
        snakemake.params.lock_dir, snakemake.threads,
        validation_dir=str(validation) if (validation / "metadata.jsonl").exists() else None,
        chosen_step=snakemake.params.chosen_step,
        key=f"conceptor.runs.{snakemake.wildcards.run}.recipe",
        progress=settings.progress,
        licences=[settings.licences.trained_lora("conceptor", snakemake.wildcards.run)],
    )  # fmt: skip
