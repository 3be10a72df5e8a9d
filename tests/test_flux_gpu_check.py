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


def test_refinement_gpu_check_runs_a_real_tile_job_on_the_cpu(capsys):
    """bench/gpu_refine_check.py: the load, then refine_windows over real stores, a median
    per-window cost with its breakdown, the plan's estimate beside it, the production
    projection (the CUDA run needs a GPU and is never started here)."""
    spec = importlib.util.spec_from_file_location(
        "refine_check", REPO / "bench/gpu_refine_check.py"
    )
    refine_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refine_check)
    smoke = ["--device", "cpu", "--model", str(TINY_SPEC), "--tile", "64", "--windows", "5"]
    code = refine_check.main([*smoke, "--steps", "2", "--per-forward", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and "error" not in report, report.get("traceback")
    per_window = report["per_window"]
    assert per_window["samples"] == 4 and per_window["windows"] == 5
    parts = per_window["breakdown"]
    assert set(parts) == {"read", "refine", "anchor", "write", "load_amortised"}
    assert per_window["seconds"] == pytest.approx(sum(parts.values()), abs=0.01)
    assert report["settings"]["quantized"] and report["settings"]["lora_rank"] == 16
    production = report["production"]
    assert [p["pass"] for p in production["passes"]] == ["1.1", "1.2", "1.3", "1.4"]
    assert production["gpu_hours"] > 0 and report["estimate_gib"]["job"] > 0
