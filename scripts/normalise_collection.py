"""Check the collection's consent, then normalise its scans to sRGB with a manifest."""

from blkassist.corpus.collections import require_consent
from blkassist.corpus.normalise import normalise_collection
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    name, collection = snakemake.wildcards.collection, snakemake.params.collection
    require_consent(name, collection)
    normalise_collection(
        name, collection["path"], snakemake.params.images, snakemake.output.manifest,
        snakemake.output.report, snakemake.params.max_pixels, collection["alpha"],
    )  # fmt: skip
