"""Train the transparent VAE on a folder of RGBA PNGs; report the round-trip alpha error."""

from blkassist import licences
from blkassist.runlog import rule_logging
from blkassist.stencil_model.train_vae import train_run

with rule_logging(snakemake):
    out = snakemake.output
    train_run(
        snakemake.input.model, snakemake.input.spec, snakemake.input.assets, out.weights,
        out.model_card, out.sheet, snakemake.params.settings, snakemake.threads,
        progress=snakemake.config["progress"],
        licences=[licences.transparent_vae(snakemake.config)],
    )  # fmt: skip
