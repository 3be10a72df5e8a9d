#!/usr/bin/env bash
# Snakemake runs this inside the new torch env: basicsr's setup.py imports torch, so it
# must be built without isolation, after torch is installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python -m pip install --no-build-isolation --no-deps -r "$here/../requirements/sr.txt"
