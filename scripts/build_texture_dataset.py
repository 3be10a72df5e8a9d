"""datasets/texture-RUN from the crops and their (possibly edited) captions."""

from blkassist.runlog import rule_logging
from blkassist.texture.dataset import build_texture_dataset

with rule_logging(snakemake) as log:
    name = f"texture-{snakemake.wildcards.run}"
    summary = build_texture_dataset(
        name, snakemake.input.plan, snakemake.input.index, snakemake.output.dataset
    )
    log.info("%s: %s", name, summary["counts"])
