"""Render a BLK-Stencil training set (synthetic ink assets + the artist's RGBA assets)."""

from blkassist.runlog import rule_logging
from blkassist.stencil.dataset import build_stencil_dataset, collection_assets

with rule_logging(snakemake) as log:
    assets = collection_assets(snakemake.input.manifests, snakemake.input.captions)
    log.info("read %d artist asset(s) from %s", len(assets), list(snakemake.input.manifests))
    summary = build_stencil_dataset(
        snakemake.wildcards.stencil,
        snakemake.params.settings,
        snakemake.params.synthetic,
        assets,
        snakemake.output.dataset,
    )
    log.info(
        "wrote %s: stages %s",
        snakemake.output.dataset,
        {s["name"]: s["files"] for s in summary["stages"]},
    )
