"""Train (or resume) a Stencil style LoRA by curriculum on RGBA assets encoded by the
transparent VAE; export it with its model card, RGBA contact sheet and loss plot."""

from blkassist import licences
from blkassist.flux.train import train_run
from blkassist.runlog import rule_logging
from blkassist.stencil_model.curriculum import stencil_training
from blkassist.stencil_model.settings import Curriculum

with rule_logging(snakemake):
    run, i = snakemake.wildcards.stencil_run, snakemake.input
    settings = snakemake.config["stencil"]["runs"][run]
    key = f"stencil.runs.{run}"
    curriculum = Curriculum.from_config(
        settings["curriculum"], settings["recipe"]["steps"], f"{key}.curriculum"
    )
    stencil = stencil_training(
        i.vae_spec, i.vae, curriculum, layer_lora=(i.layer_lora or [None])[0]
    )
    train_run(
        settings["recipe"], i.model, i.dataset, snakemake.params.run_dir, snakemake.output.lora,
        snakemake.output.model_card, snakemake.params.lock_dir, snakemake.threads,
        chosen_step=snakemake.params.chosen_step, key=f"{key}.recipe",
        title="Flux.1-dev Stencil style LoRA (RGBA assets, curriculum)",
        contact_sheet=snakemake.output.contact_sheet, loss_plot=snakemake.output.loss_plot,
        progress=snakemake.config["progress"],
        licences=[licences.trained_lora(snakemake.config, "stencil", run)], **stencil,
    )  # fmt: skip
