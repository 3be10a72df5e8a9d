"""Check a mural's source (header, pixel limit, full decode) and record what it is."""

from blkassist.fsutil import write_json
from blkassist.probe import probe
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    info = probe(snakemake.params.source, snakemake.params.max_pixels)
    log.info(
        "%s: %dx%d, %d bands, %s %s, orientation %d",
        info.path, info.width, info.height, info.bands, info.band_format, info.interpretation,
        info.orientation,
    )  # fmt: skip
    if info.pages > 1:
        log.warning("%s has %d pages: the first page is the mural source", info.path, info.pages)
    write_json(snakemake.output.report, info.to_dict())
