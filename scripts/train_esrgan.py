"""Fine-tune Real-ESRGAN on the corpus, resuming from the run's last checkpoint."""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.sr.train.run import train_run

with rule_logging(snakemake):
    out, settings = snakemake.output, JobSettings(snakemake.config)
    train_run(
        snakemake.wildcards.run, snakemake.params.settings, snakemake.input.manifests,
        snakemake.input.init, snakemake.params.run_dir, out.weights, out.model_card,
        out.validation_csv, out.validation_plot, snakemake.params.lock_dir, snakemake.threads,
        progress=settings.progress,
        licences=[settings.licences.sr_model(f"esrgan:{snakemake.wildcards.run}")],
    )  # fmt: skip
