"""Deep Zoom pyramid of one viewer layer."""

from blkassist.runlog import rule_logging
from blkassist.viewer import deep_zoom

with rule_logging(snakemake):
    deep_zoom(
        image=snakemake.input.image,
        dzi=snakemake.output.dzi,
        tiles=snakemake.output.tiles,
        tile_size=snakemake.params.tile_size,
        overlap=snakemake.params.overlap,
        quality=snakemake.params.quality,
        overlays=snakemake.params.overlays,
    )
