"""Draw the deterministic synthetic pen-and-ink artwork used by the demo."""

from blkassist.demo.synth import pen_and_ink
from blkassist.fsutil import atomic_path
from blkassist.runlog import rule_logging

with rule_logging(snakemake):
    p = snakemake.params
    artwork = snakemake.output.artwork
    with atomic_path(artwork) as tmp:
        image = pen_and_ink(p.width, p.height, p.seed, p.alpha, zoom=p.zoom)
        image.save(tmp, format="PNG" if artwork.endswith(".png") else "TIFF")
