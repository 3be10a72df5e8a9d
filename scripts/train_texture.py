"""Train (or resume) a texture LoRA; export it with its model card, contact sheet and loss
plot. The full recipe comes from the config (params hold what defines the outputs)."""

from pathlib import Path

from blkassist.flux.train import train_run
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    run, settings = snakemake.wildcards.run, JobSettings(snakemake.config)
    dataset = Path(snakemake.input.dataset)
    validation = dataset / "validation"
    train_run(
        dict(settings.texture_run(run).recipe), snakemake.input.model,
        str(dataset / "train"), snakemake.params.run_dir, snakemake.output.lora,
        snakemake.output.model_card, snakemake.params.lock_dir, snakemake.threads,
        validation_dir=str(validation) if (validation / "metadata.jsonl").exists() else None,
        chosen_step=snakemake.params.chosen_step, key=f"texture.runs.{run}.recipe",
        title="Flux.1-dev texture LoRA (BLK-Upscale diffusion refinement)",
        contact_sheet=snakemake.output.contact_sheet, loss_plot=snakemake.output.loss_plot,
        progress=settings.progress,
        licences=[settings.licences.trained_lora("texture", run)],
    )  # fmt: skip
