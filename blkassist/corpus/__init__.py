"""The artist's corpus: collections with consent, normalised scans, training sets."""
