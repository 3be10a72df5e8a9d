"""Device memory estimates from model configs (no weights loaded): parameter counts equal
the real modules', 8-bit bytes equal what quanto stores, and the paper's cards: 8-bit Flux
refinement fits a 24 GB card, bf16 only a 48 GB one."""

from __future__ import annotations

import pytest
import torch

from blkassist.demo.random_flux import save_random_flux
from blkassist.flux.loader import load_flux, module_bytes
from blkassist.gpu_memory import (
    GIB,
    flux_configs,
    flux_sizes,
    refine_job_memory,
    refine_memory_or_reason,
    rrdbnet_parameters,
)
from tests.flux_fixtures import FULL_RANDOM_SPEC, TINY_SPEC

PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


@pytest.mark.parametrize("spec", [TINY_SPEC, FULL_RANDOM_SPEC], ids=["tiny", "flux1-dev"])
def test_parameter_counts_from_configs_equal_the_built_modules(spec):
    built = load_flux(spec, "meta" if spec == FULL_RANDOM_SPEC else "cpu", torch.bfloat16,
                      defer=True)  # fmt: skip
    sizes = flux_sizes(spec)
    for part in PARTS:
        module = getattr(built, part)
        assert sizes[part].parameters == sum(p.numel() for p in module.parameters()), part
        linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
        assert sizes[part].linear == linear, part
    blocks = [b for b in built.transformer.modules() if type(b).__name__.endswith("Block")]
    assert sizes["transformer"].largest_block == max(
        sum(p.numel() for p in b.parameters()) for b in blocks
    )


def test_eight_bit_bytes_are_what_quanto_stores():
    quantised = load_flux(TINY_SPEC, quantize=True)  # fp32 on the CPU: 4 bytes a value
    estimated = flux_sizes(TINY_SPEC)["transformer"].bytes(4, eight_bit=True)
    assert abs(estimated - module_bytes(quantised.transformer)) / estimated < 0.02


def test_a_saved_folder_gives_the_same_sizes_as_its_spec(tmp_path):
    folder = save_random_flux(TINY_SPEC, tmp_path / "tiny-flux")
    assert flux_sizes(folder) == flux_sizes(TINY_SPEC)
    assert flux_configs(folder)["transformer"]["num_layers"] == 1
    missing = refine_memory_or_reason(tmp_path / "nowhere", quantize=True, tile=1024,
                                      tiles_per_forward=1, max_sequence_length=512)  # fmt: skip
    assert "cannot read the model's configs" in missing["unknown"]


@pytest.mark.parametrize("per_forward", [1, 2, 4])
def test_flux_refinement_fits_the_papers_cards_as_the_production_config_says(per_forward):
    """FLUX.1-dev (11.9 B transformer, 4.8 B T5): 8-bit with 1024-px windows fits a 24 GB
    RTX 3090 whatever the forward group; bf16 needs a 48 GB card."""
    settings = {"tile": 1024, "tiles_per_forward": per_forward, "max_sequence_length": 512}
    eight_bit = refine_job_memory(FULL_RANDOM_SPEC, quantize=True, **settings)
    full = refine_job_memory(FULL_RANDOM_SPEC, quantize=False, **settings)
    assert eight_bit["bytes"] < 24 * GIB < full["bytes"] < 48 * GIB
    # Loading never holds the text encoders beside the transformer.
    encoders = eight_bit["weights"]["text_encoders"]
    assert eight_bit["stages"]["encode"] < encoders * 1.1
    assert eight_bit["stages"]["sample"] < eight_bit["weights"]["transformer"] + 6 * GIB


def test_rrdbnet_parameters_match_real_esrgan_x4plus():
    from blkassist.compat import rrdbnet_class

    model = rrdbnet_class()(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23,
                            num_grow_ch=32)  # fmt: skip
    assert rrdbnet_parameters() == sum(p.numel() for p in model.parameters()) == 16_697_987
