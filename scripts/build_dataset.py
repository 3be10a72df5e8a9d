"""Build a training set (crops, buckets, flips, split, sidecar captions)."""

from blkassist.captions.sidecars import read_captions
from blkassist.corpus.datasets import build_dataset, source_images
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    images = source_images(snakemake.input.manifests, read_captions(snakemake.input.captions))
    summary = build_dataset(
        snakemake.wildcards.dataset, images, snakemake.params.settings, snakemake.output.dataset
    )
    log.info("%s: %s", snakemake.wildcards.dataset, summary["counts"])
