"""Concept sketches for every prompt and seed, with provenance sidecars and a contact sheet."""

from blkassist.flux.generate import generate_run
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    s = snakemake.params.settings
    generate_run(
        snakemake.input.model, s["prompts"], snakemake.params.folder, snakemake.params.lock_dir,
        snakemake.threads, seeds=s["seeds"], aspect=s["aspect"], megapixels=s["megapixels"],
        steps=s["steps"], guidance=s["guidance"], lora=(snakemake.input.lora or [None])[0],
        lora_scale=s["lora_scale"], max_sequence_length=s["max_sequence_length"],
        licences=JobSettings(snakemake.config).licences.concept(snakemake.wildcards.concept),
    )  # fmt: skip
