"""The kohya / ComfyUI copy of a Flux LoRA: read back by diffusers' own kohya converter, a
LoRA of the full FLUX.1-dev shapes (tensors only, no base model) gives exactly the same
effective weight deltas (B @ A x scale), fused q/k/v blocks included."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from peft import LoraConfig
from safetensors.torch import load_file

from blkassist.demo import read_spec
from blkassist.errors import ConfigError
from blkassist.flux.kohya import bfl_module, export_kohya, kohya_path
from tests.flux_fixtures import FULL_RANDOM_SPEC

RANK, ALPHA = 4, 8  # scale 2: a power of two, so the comparison can be exact
# Whole deltas of the fused q/k/v (+ MLP input) parts of the first double and the last
# single block, and of the final layer (whose halves swap); every other module is compared
# through a probe.
CHECKED = re.compile(
    r"^(transformer_blocks\.0\.attn\.(to_[qkv]|add_[qkv]_proj)"
    r"|single_transformer_blocks\.37\.(attn\.to_[qkv]|proj_mlp)|norm_out\.linear|proj_out)$"
)


@pytest.fixture(scope="module")
def dev_lora(tmp_path_factory):
    """A LoRA on every Linear of FLUX.1-dev's transformer (built on the meta device: shapes
    only), saved as the trainers save theirs; random fp16 factors."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**read_spec(FULL_RANDOM_SPEC)["transformer"])
    generator = torch.Generator().manual_seed(0)
    state, modules = {}, []
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            modules.append(name)
            shapes = {"A": (RANK, module.in_features), "B": (module.out_features, RANK)}
            for part, shape in shapes.items():
                values = torch.randn(shape, generator=generator).half()
                state[f"{name}.lora_{part}.weight"] = values  # diffusers adds "transformer."
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=modules)
    folder = tmp_path_factory.mktemp("lora")
    FluxPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=state,
        weight_name="dev.safetensors",
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return folder / "dev.safetensors", state, modules


def delta(down: torch.Tensor, up: torch.Tensor, rows: slice) -> torch.Tensor:
    return up[rows].double() @ down.double()


def test_diffusers_reads_the_kohya_copy_back_to_the_same_deltas(dev_lora):
    path, state, modules = dev_lora
    kohya = export_kohya(path)
    assert kohya == kohya_path(path) and kohya.name == "dev.kohya.safetensors"
    saved = load_file(kohya)
    assert len(modules) == 19 * 14 + 38 * 6 + 10
    # q/k/v fuse into one Linear per stream and block (and the MLP input in single blocks)
    assert len(saved) == 3 * (19 * 10 + 38 * 3 + 10)
    qkv = "lora_unet_double_blocks_5_img_attn_qkv"
    assert saved[f"{qkv}.lora_down.weight"].shape == (3 * RANK, 3072)
    assert saved[f"{qkv}.lora_up.weight"].shape == (3 * 3072, 3 * RANK)
    assert saved[f"{qkv}.alpha"].item() == 3 * ALPHA  # alpha / rank stays 2
    linear1 = saved["lora_unet_single_blocks_7_linear1.lora_up.weight"]
    assert linear1.shape == (3 * 3072 + 12288, 4 * RANK)
    assert not linear1[:3072, RANK:].any() and not linear1[3072:, :RANK].any()  # block-diagonal

    converted = FluxPipeline.lora_state_dict(str(kohya))  # diffusers' own kohya converter
    converted = converted[0] if isinstance(converted, tuple) else converted
    # (diffusers names the modules outside the blocks without its "transformer." prefix)
    converted = {k.removeprefix("transformer."): v for k, v in converted.items()}
    assert {k.rsplit(".lora_", 1)[0] for k in converted} == set(modules)
    scale = ALPHA / RANK
    for module in modules:
        down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
        got_down, got_up = (
            converted[f"{module}.lora_A.weight"],
            converted[f"{module}.lora_B.weight"],
        )
        if CHECKED.match(module):  # the whole delta, exactly, in row chunks
            for start in range(0, up.shape[0], 4096):
                rows = slice(start, start + 4096)
                want = scale * delta(down, up, rows)
                assert torch.equal(delta(got_down, got_up, rows), want), module
        else:  # every other module through a probe
            probe = torch.randn(down.shape[1], 2, dtype=torch.float64)
            want = scale * (up.double() @ (down.double() @ probe))
            got = got_up.double() @ (got_down.double() @ probe)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=module)


def test_modules_without_a_kohya_counterpart_and_lokr_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"attn\.norm_q: no counterpart"):
        bfl_module("transformer_blocks.0.attn.norm_q")
    assert bfl_module("single_transformer_blocks.3.proj_mlp") == ("single_blocks.3.linear1", "mlp")
    assert bfl_module("norm_out.linear") == ("final_layer.adaLN_modulation.1", None)
    state = {"transformer_blocks.0.attn.to_q.lokr_w1": torch.zeros(2, 2)}
    FluxPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=state,
        weight_name="lokr.safetensors",
        transformer_lora_adapter_metadata={"peft_type": "LOKR", "r": 4},
    )
    with pytest.raises(ConfigError, match="LOKR adapter has no kohya LoRA layout"):
        export_kohya(tmp_path / "lokr.safetensors")
