"""Flux from ComfyUI's single files: the tiny model written in the BFL / LDM layout of
flux1-dev.safetensors, ae.safetensors, clip_l.safetensors and t5xxl_fp16.safetensors gives
identical images; fp8 files load; wrong or missing files are named before anything loads;
the transformer's key conversion equals diffusers' own on the FLUX.1-dev layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from blkassist.demo import read_spec
from blkassist.demo.random_flux import save_random_flux
from blkassist.errors import ModelFileError
from blkassist.flux.generate import render
from blkassist.flux.loader import load_flux
from blkassist.flux.single_file import (
    DEFAULT_CONFIG,
    bfl_to_diffusers,
    check_flux_model,
    diffusers_to_bfl,
    expected_bfl_shapes,
    is_single_file_model,
    resolve_layout,
    transformer_landmarks,
)
from tests.flux_fixtures import FULL_RANDOM_SPEC, TINY_SPEC, write_comfyui_tree

IMAGE = {"seed": 3, "width": 64, "height": 48, "steps": 2, "guidance": 3.5,
         "max_sequence_length": 32, "prompt": "ink drawing, red circle"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_random_flux(TINY_SPEC, tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture(scope="module")
def comfy(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("artist")
    return write_comfyui_tree(root / "ComfyUI", tiny_folder)


def manifest(folder, **entries):
    path = folder / "flux.yaml"
    path.write_text(yaml.safe_dump({"kind": "single_file", **entries}))
    return path


def test_comfyui_files_give_the_diffusers_folders_images(tiny_folder, comfy, tmp_path):
    spec = manifest(tmp_path, comfyui=str(comfy), config=str(comfy.parent / "tiny-config"))
    assert is_single_file_model(spec) and is_single_file_model(comfy)
    layout = resolve_layout(spec)
    assert layout.transformer == comfy / "models/unet/flux1-dev.safetensors"
    assert layout.text_encoder_2 == comfy / "models/clip/t5xxl_fp16.safetensors"
    assert layout.tokenizers == comfy / "comfy"  # ComfyUI's own tokenizer folders
    from_files, from_folder = load_flux(spec), load_flux(tiny_folder)
    assert from_files.source == f"single files from {spec}"
    assert set(from_files.identity) == set(from_folder.identity)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        got, want = getattr(from_files, part).state_dict(), getattr(from_folder, part).state_dict()
        assert got.keys() == want.keys(), part
        assert all(torch.equal(got[k], want[k]) for k in want), part
    a = np.asarray(render(from_files.pipeline(), **IMAGE))
    b = np.asarray(render(from_folder.pipeline(), **IMAGE))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["fp8", "scaled_fp8"])
def test_fp8_transformers_load(tiny_folder, comfy, tmp_path, kind):
    tree = shutil.copytree(comfy.parent, tmp_path / "copy")
    unet = tree / "ComfyUI/models/unet/flux1-dev.safetensors"
    weights = load_file(unet)
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in weights.items()}
    if kind == "scaled_fp8":  # ComfyUI's: fp8 weight x per-layer scale_weight
        scales = {k: v.abs().max() / 448 for k, v in weights.items() if v.ndim == 2}
        fp8 = {k: (v / scales[k]).to(torch.float8_e4m3fn) if k in scales else v
               for k, v in weights.items()}  # fmt: skip
        fp8 |= {
            k.removesuffix(".weight") + ".scale_weight": s.reshape(1) for k, s in scales.items()
        }
        fp8["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(fp8, unet)
    spec = manifest(tmp_path, comfyui=str(tree / "ComfyUI"), config=str(tree / "tiny-config"))
    loaded = load_flux(spec)
    reference = load_flux(tiny_folder).transformer.state_dict()
    to_q = loaded.transformer.transformer_blocks[0].attn.to_q.weight
    want = reference["transformer_blocks.0.attn.to_q.weight"]
    assert to_q.dtype == torch.float32 and not torch.equal(to_q, want)  # really fp8-rounded
    torch.testing.assert_close(to_q, want, rtol=0.07, atol=1e-3)
    a = np.asarray(render(loaded.pipeline(), **IMAGE)).astype(int)
    b = np.asarray(render(load_flux(tiny_folder).pipeline(), **IMAGE)).astype(int)
    assert np.abs(a - b).mean() < 8


def test_wrong_or_missing_files_are_named_before_anything_loads(comfy, tmp_path, monkeypatch):
    import diffusers

    def heavy(*args, **kwargs):
        raise AssertionError("nothing may load before the files are checked")

    monkeypatch.setattr(diffusers.FluxTransformer2DModel, "from_single_file", heavy)
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_single_file", heavy)
    tree = shutil.copytree(comfy.parent, tmp_path / "copy")
    root, config = tree / "ComfyUI", tree / "tiny-config"
    (root / "models/clip/t5xxl_fp16.safetensors").unlink()
    unet = root / "models/unet/flux1-dev.safetensors"  # schnell has no guidance embedder
    save_file({k: v for k, v in load_file(unet).items() if "guidance_in" not in k}, unet)
    vae = root / "models/vae/ae.safetensors"  # a 4-channel (SD) autoencoder
    sd_vae = load_file(vae)
    sd_vae["encoder.conv_out.weight"] = sd_vae["encoder.conv_out.weight"][:8].clone()
    save_file(sd_vae, vae)
    shutil.rmtree(root / "comfy" / "text_encoders")
    with pytest.raises(ModelFileError) as error:
        load_flux(manifest(tmp_path, comfyui=str(root), config=str(config)))
    message = str(error.value)
    assert "the T5-XXL text encoder (t5xxl_fp16.safetensors) was not found" in message
    assert "missing key(s), e.g. guidance_in.in_layer.weight" in message
    assert "encoder.conv_out.weight (8, 16, 3, 3) (expected (32, 16, 3, 3))" in message
    assert "the tokenizers were not found" in message and "Fix: give the model setting" in message
    # A ComfyUI folder given as it is: checked against FLUX.1-dev's shipped configs.
    with pytest.raises(ModelFileError, match=r"flux1-dev\.safetensors does not fit .*FLUX\.1-dev"):
        check_flux_model(comfy)
    with pytest.raises(ModelFileError, match=r"nowhere\.yaml"):
        check_flux_model(tmp_path / "nowhere.yaml")


def test_transformer_conversion_is_diffusers_own_on_the_flux1_dev_layout():
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    config = json.loads((DEFAULT_CONFIG / "transformer/config.json").read_text())
    bfl, diffusers_shapes = expected_bfl_shapes(config)
    assert len([k for k in bfl if k.endswith("linear1.weight")]) == 38
    assert bfl["double_blocks.18.img_attn.qkv.weight"] == (3 * 3072, 3072)
    assert bfl["single_blocks.0.linear1.weight"] == (3 * 3072 + 12288, 3072)
    # Every BFL tensor with its real rows and one column (the conversion splits rows only).
    generator = torch.Generator().manual_seed(0)
    checkpoint = {k: torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=generator)
                  for k, shape in bfl.items()}  # fmt: skip
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(checkpoint))
    ours = bfl_to_diffusers(checkpoint, diffusers_shapes, config)
    assert ours.keys() == theirs.keys() == diffusers_shapes.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    landmarks = transformer_landmarks(config)  # the parse-time check's, by hand
    assert all(bfl[k] == shape for k, shape in landmarks.items()), landmarks
    back = diffusers_to_bfl(ours, config)
    assert back.keys() == checkpoint.keys()
    assert all(torch.equal(back[k], checkpoint[k]) for k in checkpoint)


def test_shipped_configs_are_flux1_devs_architecture():
    spec = read_spec(FULL_RANDOM_SPEC)
    for part in ("vae", "text_encoder", "text_encoder_2"):
        shipped = json.loads((DEFAULT_CONFIG / part / "config.json").read_text())
        assert {k: shipped[k] for k in spec[part]} == spec[part], part
    scheduler = json.loads((DEFAULT_CONFIG / "scheduler/scheduler_config.json").read_text())
    assert {k: scheduler[k] for k in spec["scheduler"]} == spec["scheduler"]


def test_the_workflow_names_a_broken_model_before_any_job(comfy, tmp_path):
    from tests.conftest import run_snakemake, synthetic_corpus, write_config

    tree = shutil.copytree(comfy.parent, tmp_path / "copy")
    (tree / "ComfyUI/models/vae/ae.safetensors").unlink()
    spec = manifest(tmp_path, comfyui=str(tree / "ComfyUI"), config=str(tree / "tiny-config"))
    config = {
        "corpus": synthetic_corpus(2, 0, 128),
        "datasets": {"small": {"collections": ["ink"], "resolutions": [128]}},
        "conceptor": {"model": str(spec), "runs": {"ink": {"dataset": "small"}}},
    }
    done = run_snakemake(tmp_path, [write_config(tmp_path, config)], "-n", check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "the Flux autoencoder (ae.safetensors) was not found" in output, output[-3000:]
    (tree / "ComfyUI/models/vae/ae.safetensors").write_bytes(
        (comfy / "models/vae/ae.safetensors").read_bytes()
    )
    again = run_snakemake(tmp_path, [write_config(tmp_path, config)], "-n")
    assert "train_conceptor" in again.stdout
