"""Captions: sidecar .txt per image, from vLLM or the built-in captioner, never
overwriting the artist's own edits."""
