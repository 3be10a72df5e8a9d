"""Pages of docs/ that are generated from the project's own sources."""
