"""The Flux loader: the tiny random model, the production folder path, errors, 8-bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.generate import render
from blkassist.flux.loader import (
    check_flux_folder,
    load_flux,
    read_spec,
    save_random_flux,
)
from tests.flux_fixtures import FULL_RANDOM_SPEC, REPO, TINY_SPEC

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE = {
    "seed": 3,
    "width": 64,
    "height": 48,
    "steps": 2,
    "guidance": 3.5,
    "max_sequence_length": 32,
    "prompt": "ink drawing, red circle",
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_random_flux(TINY_SPEC, tmp_path_factory.mktemp("flux") / "tiny-flux")


def test_saved_tiny_model_loads_as_a_diffusers_folder_with_the_same_output(tiny_folder):
    assert (tiny_folder / "model_index.json").is_file()
    from_spec, from_folder = load_flux(TINY_SPEC), load_flux(tiny_folder)
    assert from_folder.source == str(tiny_folder) and from_folder.dtype == torch.float32
    assert set(from_folder.identity) == set(from_spec.identity)
    assert not any(p.requires_grad for p in from_folder.transformer.parameters())
    assert not from_folder.text_encoder_2.training  # T5 dropout off: embeddings repeat
    a = np.asarray(render(from_spec.pipeline(), **IMAGE))
    b = np.asarray(render(from_folder.pipeline(), **IMAGE))
    assert a.shape == (48, 64, 3) and np.array_equal(a, b)


def test_missing_or_broken_parts_are_named_before_loading(tiny_folder, tmp_path, monkeypatch):
    import diffusers

    def heavy(*args, **kwargs):
        raise AssertionError("from_pretrained must not run for an incomplete folder")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", heavy)
    broken = shutil.copytree(tiny_folder, tmp_path / "broken")
    (broken / "text_encoder_2" / "model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer")
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 23802932552\n"
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(pointer)
    with pytest.raises(ModelFileError) as error:
        load_flux(broken)
    message = str(error.value)
    assert "text_encoder_2/ (the T5 text encoder): model.safetensors" in message
    assert "tokenizer/ (the CLIP tokenizer) is missing" in message
    assert "git-lfs pointer" in message
    assert "hf download black-forest-labs/FLUX.1-dev" in message
    with pytest.raises(ModelFileError, match="folder not found"):
        check_flux_folder(tmp_path / "nowhere")


def test_spec_errors_are_clear(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_flux(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: pretrained\n")
    with pytest.raises(ConfigError, match="kind must be 'random'"):
        load_flux(bad)
    full = read_spec(FULL_RANDOM_SPEC)  # the GPU check's spec parses; never built here
    assert full["text_encoder_2"]["d_model"] == 4096


def test_8bit_quantised_transformer_generates_close_to_full_precision():
    from optimum.quanto.nn import QLinear

    full, quantised = load_flux(TINY_SPEC), load_flux(TINY_SPEC, quantize=True)
    assert quantised.quantized and quantised.describe()["quantized"] == "qint8"
    assert isinstance(quantised.transformer.transformer_blocks[0].attn.to_q, QLinear)
    a = np.asarray(render(full.pipeline(), **IMAGE)).astype(int)
    b = np.asarray(render(quantised.pipeline(), **IMAGE)).astype(int)
    assert np.abs(a - b).max() <= 8


def test_the_flux_library_works_without_the_checkout(tmp_path):
    """Installed alone (no resources/, no config/), every Flux module imports and builds a
    model from a spec passed in."""
    import subprocess
    import sys

    shutil.copytree(REPO / "blkassist", tmp_path / "lib" / "blkassist")
    spec = shutil.copy(TINY_SPEC, tmp_path / "spec.yaml")
    code = (
        "import blkassist.flux, pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(blkassist.flux.__path__):\n"
        "    importlib.import_module('blkassist.flux.' + m.name)\n"
        "from blkassist.flux.loader import load_flux\n"
        f"print(load_flux({str(spec)!r}).transformer.config.num_layers)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "lib"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("1")
