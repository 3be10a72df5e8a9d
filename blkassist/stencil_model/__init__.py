"""BLK-Stencil model: Flux with LayerDiffuse transparency (offset encoder + RGBA decoder,
frozen layer LoRA), RGBA asset generation and layered compositions."""
