"""The QA gate of one refinement pass: re-render the windows its seams or fidelity blame."""

from blkassist.job_settings import JobSettings
from blkassist.refine.jobs import run_qa_rerender
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
job_settings = JobSettings(snakemake.config)
with rule_logging(snakemake):
    run_qa_rerender(
        allocation=snakemake.input.allocation,
        output=snakemake.output.gate,
        mural=snakemake.wildcards.mural,
        settings=snakemake.params.settings,
        qa=snakemake.params.qa,
        model=snakemake.input.model,
        lora=snakemake.input.lora or None,
        gpu=job_settings.gpu,
        threads=snakemake.threads,
    )
