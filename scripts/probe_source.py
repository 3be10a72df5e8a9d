"""Check a mural's source (header, pixel limit, full decode) and record what it is."""

from blkassist.fsutil import write_json
from blkassist.probe import probe
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    info = probe(snakemake.params.source, snakemake.params.max_pixels)
    log.info(
        "%s: %dx%d, %d bands, %s", info.path, info.width, info.height, info.bands, info.band_format
    )
    write_json(snakemake.output.report, info.to_dict())
