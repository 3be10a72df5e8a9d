"""Sample one pass's re-rolled (or propagated) windows again, on a leased device."""

from blkassist.job_settings import JobSettings
from blkassist.refine.reroll_jobs import run_reroll_windows
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
job_settings = JobSettings(snakemake.config)
with rule_logging(snakemake):
    run_reroll_windows(
        allocation=snakemake.input.allocation,
        members=snakemake.params.job["members"],
        mural=snakemake.wildcards.mural,
        settings=snakemake.params.settings,
        model=snakemake.input.model,
        lora=snakemake.input.lora or None,
        gpu=job_settings.gpu,
        threads=snakemake.threads,
        source=snakemake.params.job["source"],
        base=snakemake.params.job["base"],
        gate=next((f for f in snakemake.input.done if f.endswith("qa.json")), None),
        marker=snakemake.output.marker,
    )
