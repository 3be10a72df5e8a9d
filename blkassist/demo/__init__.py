"""Demo-only code: what the demo and the tests use in place of an artist's corpus and of
Flux.1-dev weights (the learned ink model and how it is built)."""
