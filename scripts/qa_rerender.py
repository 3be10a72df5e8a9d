"""The QA gate of one refinement pass: re-render the windows its seams or fidelity blame."""

from blkassist.refine.jobs import run_qa_rerender
from blkassist.runlog import rule_logging

# Scheduling knobs come from the config, not params: changing them never redoes work.
refine = snakemake.config["murals"][snakemake.wildcards.mural]["refine"]
with rule_logging(snakemake):
    run_qa_rerender(
        allocation=snakemake.input.allocation,
        output=snakemake.output.gate,
        mural=snakemake.wildcards.mural,
        settings=snakemake.params.settings,
        qa=snakemake.params.qa,
        model=snakemake.input.model,
        lora=snakemake.input.lora or None,
        scheduling=refine,
        gpu=snakemake.config["gpu"],
        threads=snakemake.threads,
    )
