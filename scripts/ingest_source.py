"""Stream the source into canvas 0 as 8-bit sRGB (RGB or RGBA)."""

from blkassist import canvas
from blkassist.fsutil import read_json
from blkassist.probe import open_as_srgb8
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    report = read_json(snakemake.input.report)
    image = open_as_srgb8(snakemake.params.source, snakemake.params.max_pixels)
    canvas.ingest(image, snakemake.output.canvas, snakemake.params.chunk, {"source": report})
    log.info("canvas0: %dx%d, %d bands", image.width, image.height, image.bands)
