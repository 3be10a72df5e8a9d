"""RGBA ink shapes with anti-aliased alpha: training data for the tiny transparent VAE."""

from blkassist.runlog import rule_logging
from blkassist.stencil_model.shapes import write_ink_shapes

with rule_logging(snakemake) as log:
    p = snakemake.params
    paths = write_ink_shapes(snakemake.output.folder, p.shapes, p.size, p.seed)
    log.info("drew %d RGBA shapes (%d px) in %s", len(paths), p.size, snakemake.output.folder)
