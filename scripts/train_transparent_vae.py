"""Train the transparent VAE on a folder of RGBA PNGs; report the round-trip alpha error."""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.stencil_model.train_vae import train_run

with rule_logging(snakemake):
    out, settings = snakemake.output, JobSettings(snakemake.config)
    train_run(
        snakemake.input.model, snakemake.input.spec, snakemake.input.assets, out.weights,
        out.model_card, out.sheet, snakemake.params.settings, snakemake.threads,
        progress=settings.progress,
        licences=[settings.licences.transparent_vae()],
    )  # fmt: skip
