"""The Flux loader: the tiny random model, the production folder path, errors, 8-bit."""

from __future__ import annotations

import shutil
import sys
import weakref

import numpy as np
import pytest
import torch

from blkassist.demo import read_spec
from blkassist.demo.random_flux import save_random_flux
from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.folder import check_flux_folder
from blkassist.flux.generate import render
from blkassist.flux.loader import load_flux
from tests.flux_fixtures import FULL_RANDOM_SPEC, REPO, TINY_SPEC, refiner_options

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


class PlacementLog:
    """Every Module.to() call in order, what was on the (simulated) device after it, and
    other events: a text encoder freed, a prompt encoded, a LoRA fused."""

    def __init__(self):
        self.events, self.peak, self.resident = [], 0, []

    def moved(self, module):
        """Record a move, with whether every transformer block already on the device is
        8-bit at that moment."""
        from optimum.quanto.nn import QLinear

        blocks = [ref() for ref in self.resident if ref() is not None]
        blocks = [b for b in blocks if type(b).__name__.endswith("TransformerBlock")]
        eight_bit = all(
            not isinstance(m, torch.nn.Linear) or isinstance(m, QLinear)
            for block in blocks for m in block.modules()
        )  # fmt: skip
        self.events.append(("to", type(module).__name__, eight_bit))
        self.resident.append(weakref.ref(module))
        self.peak = max(self.peak, self.device_bytes())

    def device_bytes(self):
        tensors = {}
        for ref in self.resident:
            module = ref()
            if module is not None:
                for tensor in module.state_dict().values():
                    tensors[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return sum(tensors.values())

    def note(self, what):
        self.events.append((what,))


def test_the_refiner_loads_in_the_order_that_keeps_the_device_peak_lowest(monkeypatch, tmp_path):
    """Text encoders visit the device, the prompt is encoded, the encoders are freed; the
    LoRA is fused on the host; then the transformer moves block by block, each quantised
    before the next moves; then the VAE, which takes one window at a time."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel, T5EncoderModel

    from blkassist.flux.loader import module_bytes
    from blkassist.refine.refiner import load_flux_refiner
    from tests.flux_fixtures import random_lora_file

    lora = random_lora_file(tmp_path, "texture.safetensors", seed=1)
    placements = PlacementLog()
    to = torch.nn.Module.to

    def recording_to(module, *args, **kwargs):
        result = to(module, *args, **kwargs)
        caller = sys._getframe(1)
        while caller.f_code.co_name == "to":  # transformers' own to() wraps torch's
            caller = caller.f_back
        if caller.f_globals["__name__"] == "blkassist.flux.loader":
            placements.moved(module)  # a placement (libraries' own .to() stay on the host)
            if isinstance(module, CLIPTextModel | T5EncoderModel):
                weakref.finalize(module, placements.note, f"freed {type(module).__name__}")
        return result

    encode, fuse = FluxPipeline.encode_prompt, FluxPipeline.fuse_lora
    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    monkeypatch.setattr(FluxPipeline, "encode_prompt",
                        lambda *a, **k: placements.note("encode") or encode(*a, **k))  # fmt: skip
    monkeypatch.setattr(FluxPipeline, "fuse_lora",
                        lambda *a, **k: placements.note("fuse") or fuse(*a, **k))  # fmt: skip
    options = refiner_options(quantize=True, lora=str(lora), steps=2)
    refiner = load_flux_refiner(str(TINY_SPEC), "cpu", **options)
    monkeypatch.undo()
    events = placements.events
    kinds = [e[1] if e[0] == "to" else e[0] for e in events]
    block_names = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    blocks = [i for i, e in enumerate(events) if e[0] == "to" and e[1] in block_names]
    assert kinds.index("fuse") < kinds.index("CLIPTextModel") < kinds.index("encode")
    assert kinds.index("T5EncoderModel") < kinds.index("encode")
    freed = [kinds.index("freed CLIPTextModel"), kinds.index("freed T5EncoderModel")]
    assert kinds.index("encode") < min(freed) and max(freed) < blocks[0]
    # Each transformer block is quantised before the next one moves.
    assert len(blocks) == 2 and all(events[i][2] for i in blocks)
    assert kinds.index("AutoencoderKL") > blocks[-1] and refiner.components.vae.use_slicing
    components = refiner.components
    assert components.text_encoder is None and components.quantized
    # The device's peak: never the text encoders beside the transformer.
    encoders = module_bytes(load_flux(TINY_SPEC).text_encoder) + module_bytes(
        load_flux(TINY_SPEC).text_encoder_2
    )
    eight_bit = module_bytes(components.transformer)
    largest_block = max(
        module_bytes(block)
        for block in load_flux(TINY_SPEC).transformer.modules()
        if type(block).__name__.endswith("TransformerBlock")
    )
    vae = module_bytes(components.vae)
    full = module_bytes(load_flux(TINY_SPEC).transformer)
    assert placements.peak <= max(encoders, eight_bit + largest_block, eight_bit + vae)
    assert placements.peak < encoders + full  # the old order's peak, at the least


def test_block_by_block_quantisation_equals_quantising_the_whole_model():
    from optimum.quanto import freeze, qint8, quantize

    whole = load_flux(TINY_SPEC)
    quantize(whole.transformer, weights=qint8)
    freeze(whole.transformer)
    blocks = load_flux(TINY_SPEC, quantize=True)
    a, b = whole.transformer.state_dict(), blocks.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
