"""The GPU check script: its arguments, and a CPU smoke run on the tiny model (the real
run needs a GPU and is never started here)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.flux_fixtures import FULL_RANDOM_SPEC, REPO, SCHEMA, TINY_SPEC

_spec = importlib.util.spec_from_file_location("flux_gpu_check", REPO / "bench/flux_gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


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
                "--texture-steps",
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
    texture = report["train_texture"]
    assert texture["losses_finite"] and texture["gradient_accumulation"] == 8
    assert texture["optimizer"]["asked"] == "adamw8bit"
    assert texture["trainable_parameters"] == 14336 // 2  # rank 16 instead of 32


def test_full_size_spec_has_flux1_dev_shapes():
    """Built on the meta device: shapes and parameter counts without memory."""
    from blkassist.flux.adapter import add_adapter
    from blkassist.flux.loader import load_flux
    from blkassist.flux.recipe import schema_recipe

    full = load_flux(FULL_RANDOM_SPEC, "meta", torch.bfloat16)

    def billions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e9, 2)

    assert billions(full.transformer) == 11.9  # Flux.1-dev's transformer
    assert billions(full.text_encoder_2) == 4.76  # T5 v1.1 XXL encoder
    assert full.vae_scale_factor == 8 and full.transformer.config.guidance_embeds
    assert {p.dtype for p in full.transformer.parameters()} == {torch.bfloat16}
    lora = add_adapter(full.transformer, schema_recipe("conceptor", {}, SCHEMA))
    assert sum(p.numel() for p in lora) == 37_355_520  # rank 32 on to_q/k/v/out.0
