"""Write the kohya / ComfyUI copy of a Flux LoRA trained here."""

from blkassist.flux.kohya import export_kohya
from blkassist.runlog import rule_logging

with rule_logging(snakemake) as log:
    export_kohya(snakemake.input.lora, snakemake.output.kohya)
    log.info("wrote %s (kohya / ComfyUI layout)", snakemake.output.kohya)
