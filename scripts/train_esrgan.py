"""Fine-tune Real-ESRGAN on the corpus, resuming from the run's last checkpoint."""

from blkassist import licences
from blkassist.runlog import rule_logging
from blkassist.sr.train.run import train_run

with rule_logging(snakemake):
    out = snakemake.output
    train_run(
        snakemake.wildcards.run, snakemake.params.settings, snakemake.input.manifests,
        snakemake.input.init, snakemake.params.run_dir, out.weights, out.model_card,
        out.validation_csv, out.validation_plot, snakemake.params.lock_dir, snakemake.threads,
        progress=snakemake.config["progress"],
        licences=[licences.sr_model(snakemake.config, f"esrgan:{snakemake.wildcards.run}")],
    )  # fmt: skip
