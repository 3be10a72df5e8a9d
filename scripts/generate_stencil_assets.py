"""RGBA assets for every prompt and seed, with provenance sidecars and a contact sheet."""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.stencil_model.assets import generate_run

with rule_logging(snakemake):
    s, i = snakemake.params.settings, snakemake.input
    licences = JobSettings(snakemake.config).licences
    generate_run(
        i.model, i.vae_spec, i.vae, s["prompts"], snakemake.params.folder,
        snakemake.params.lock_dir, snakemake.threads, layer_lora=(i.layer_lora or [None])[0],
        loras=s["loras"], seeds=s["seeds"], aspect=s["aspect"], megapixels=s["megapixels"],
        size=s.get("size"), steps=s["steps"], guidance=s["guidance"], role=s["role"],
        template=s["template"], max_sequence_length=s["max_sequence_length"],
        augment=s["augment"],
        licences=licences.stencil_assets(snakemake.wildcards.stencil_set),
    )  # fmt: skip
