"""Choose texture-primitive crops from the run's collections and cut them out."""

from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging
from blkassist.texture.select import texture_sources, write_crops

with rule_logging(snakemake):
    run = snakemake.wildcards.run
    dataset = JobSettings(snakemake.config).texture_run(run).dataset
    settings = {**snakemake.params.settings, "min_count": dataset["min_count"]}  # a check only
    write_crops(
        run, texture_sources(snakemake.input.manifests), settings, snakemake.output.crops,
        snakemake.output.plan, f"texture.runs.{run}.dataset",
    )  # fmt: skip
