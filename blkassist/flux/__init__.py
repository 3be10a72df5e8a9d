"""BLK-Conceptor: Flux.1-dev with a LoRA trained on the artist's corpus, for concept images."""
