"""Caption every image of a collection that needs it; the artist's edits are kept."""

from blkassist.captions.run import caption_collection
from blkassist.job_settings import JobSettings
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    caption_collection(
        snakemake.input.manifest, snakemake.params.folder, snakemake.output.index,
        snakemake.params.settings, snakemake.params.description,
        server_log=snakemake.log[0] + ".vllm-server",
        lock_dir=JobSettings(snakemake.config).gpu.lock_dir,
    )  # fmt: skip
