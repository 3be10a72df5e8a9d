"""Draw the deterministic synthetic pen-and-ink demo corpus."""

from blkassist.demo.corpus import write_corpus
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    s = snakemake.params.settings
    written = write_corpus(
        snakemake.output.corpus, s["seed"], s["compositions"], s["details"], s["long_side"],
        s["high_resolution"],
    )  # fmt: skip
    log.info("drew %d images", len(written))
