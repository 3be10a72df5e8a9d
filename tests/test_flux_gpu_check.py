"""The GPU check script: its arguments, and a CPU smoke run on the tiny model (the real
run needs a GPU and is never started here)."""

from __future__ import annotations

import json

import pytest
import torch

from blkassist.flux import gpu_check
from blkassist.flux.loader import FULL_RANDOM_SPEC, TINY_SPEC


def test_help_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--train-steps" in capsys.readouterr().out
    args = gpu_check.parse_args([])
    assert (args.size, args.rank, args.gen_steps, args.device) == (1024, 32, 28, "cuda")
    assert args.model == str(FULL_RANDOM_SPEC) and not args.no_quantize


def test_smoke_run_on_the_cpu_with_the_tiny_model(capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread on a busy machine only waits
    try:
        code = gpu_check.main(
            [
                "--device",
                "cpu",
                "--model",
                str(TINY_SPEC),
                "--size",
                "64",
                "--warmup-steps",
                "1",
                "--train-steps",
                "2",
                "--gen-steps",
                "2",
                "--images",
                "1",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["errors"] == {}
    assert report["quantized"] and report["train"]["losses_finite"]
    assert report["train"]["trainable_parameters"] == 14336
    assert report["generate"]["with_lora"] and report["generate"]["seconds_per_image"] > 0


def test_full_size_spec_has_flux1_dev_shapes():
    """Built on the meta device: shapes and parameter counts without memory."""
    from blkassist.flux.loader import load_flux
    from blkassist.flux.train import LoraSettings, add_adapter

    full = load_flux(FULL_RANDOM_SPEC, "meta", torch.bfloat16)

    def billions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e9, 2)

    assert billions(full.transformer) == 11.9  # Flux.1-dev's transformer
    assert billions(full.text_encoder_2) == 4.76  # T5 v1.1 XXL encoder
    assert full.vae_scale_factor == 8 and full.transformer.config.guidance_embeds
    assert {p.dtype for p in full.transformer.parameters()} == {torch.bfloat16}
    lora = add_adapter(full.transformer, LoraSettings())
    assert sum(p.numel() for p in lora) == 37_355_520  # rank 32 on to_q/k/v/out.0
