"""The static side-by-side viewer page of one mural."""

from pathlib import Path

from blkassist.runlog import rule_logging
from blkassist.viewer import write_viewer

with rule_logging(snakemake):
    write_viewer(
        page=snakemake.output.page,
        template=snakemake.input.template,
        title=f"Mural {snakemake.wildcards.mural}",
        panels=snakemake.params.layout["panels"],
        overlays=snakemake.params.layout["overlays"],
        before=snakemake.params.layout["before"],
        seams=snakemake.input.get("seams"),
        mural=snakemake.params.layout["mural"],
        grids=snakemake.params.layout["grids"],
        openseadragon_build=Path(snakemake.input.openseadragon).parent,
        openseadragon_copy=snakemake.output.openseadragon,
    )
