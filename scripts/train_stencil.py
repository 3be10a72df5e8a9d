"""Train (or resume) a Stencil style LoRA by curriculum on RGBA assets encoded by the
transparent VAE; export it with its model card, RGBA contact sheet and loss plot."""

from blkassist.flux.train import train_run
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.stencil_model.curriculum import stencil_training

with rule_logging(snakemake):
    run, i = snakemake.wildcards.stencil_run, snakemake.input
    settings = JobSettings(snakemake.config)
    stencil_run = settings.stencil_run(run)
    stencil = stencil_training(
        i.vae_spec, i.vae, stencil_run.curriculum_stages(), layer_lora=(i.layer_lora or [None])[0]
    )
    train_run(
        dict(stencil_run.recipe), i.model, i.dataset, snakemake.params.run_dir,
        snakemake.output.lora, snakemake.output.model_card, snakemake.params.lock_dir,
        snakemake.threads,
        chosen_step=snakemake.params.chosen_step, key=f"{stencil_run.key}.recipe",
        title="Flux.1-dev Stencil style LoRA (RGBA assets, curriculum)",
        contact_sheet=snakemake.output.contact_sheet, loss_plot=snakemake.output.loss_plot,
        progress=settings.progress,
        licences=[settings.licences.trained_lora("stencil", run)], **stencil,
    )  # fmt: skip
