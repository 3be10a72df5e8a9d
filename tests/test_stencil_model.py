"""The transparent VAE: published key layout, strict key check, padding, the tiny model's
trained round trip (alpha, channel order, ranges), the 8-way decode, the fused layer LoRA,
and RGBA asset generation through the tiny Flux."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from blkassist.config import schema_settings, section_with_defaults
from blkassist.demo import read_spec
from blkassist.errors import ConfigError, ModelFileError
from blkassist.flux.generate import load_adapter, render
from blkassist.flux.loader import load_flux
from blkassist.probe import sha256_file
from blkassist.progress import ProgressSettings
from blkassist.stencil_model.assets import fuse_layer_lora, generate_assets, vae_identity
from blkassist.stencil_model.settings import TransparentVAESpec
from blkassist.stencil_model.shapes import KINDS, alpha_share, write_ink_shapes
from blkassist.stencil_model.train_vae import (
    VaeTraining,
    held_out,
    read_rgba_folder,
    round_trip_errors,
    train_transparent_vae,
)
from blkassist.stencil_model.vae import (
    _AUGMENTATIONS,
    TransparentVAE,
    _augment,
    _undo,
    area_downscale,
    load_transparent_vae,
    pad_rgb,
    save_weights,
)
from tests.flux_fixtures import (
    FULL_RANDOM_SPEC,
    PUBLISHED_VAE_SPEC,
    TINY_SPEC,
    TINY_VAE_SPEC,
    random_lora_file,
)
from tests.test_stencil_ink import clear_with_opaque_ink

# The alpha error the trained tiny VAE must reach on held-out shapes: mean absolute error of
# alpha in [0, 1] after encode -> 8-way decode. Guessing "all clear" scores the mean alpha
# (~0.13 on these shapes); an untrained model ~0.3-0.5.
ALPHA_MAE_LIMIT = 0.07
TRAINING = schema_settings(VaeTraining, {"size": 64, "steps": 300, "batch_size": 4, "seed": 0})


def test_published_layout_matches_the_checkpoint():
    """The published TransparentVAE.pth (379 MB of bf16) holds this encoder and decoder plus
    a copy of the Flux VAE under sd_vae.*: the parameter counts add up to its size."""
    from diffusers import AutoencoderKL

    spec = TransparentVAESpec.from_yaml(PUBLISHED_VAE_SPEC)
    with torch.device("meta"):
        state = TransparentVAE(spec).state_dict()
        flux_vae = AutoencoderKL(**read_spec(FULL_RANDOM_SPEC)["vae"])
    assert spec.size_multiple == 64
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["encoder.blocks.0.weight"] == (32, 4, 3, 3)  # padded RGB + alpha in
    assert shapes["encoder.blocks.16.weight"] == (16, 256, 3, 3)  # 9th conv: 16 channels
    assert shapes["decoder.conv_in.weight"] == (32, 3, 3, 3)
    assert shapes["decoder.latent_conv_in.weight"] == (64, 16, 1, 1)
    assert shapes["decoder.conv_out.weight"] == (4, 32, 3, 3)
    assert shapes["decoder.down_blocks.4.attentions.0.to_q.weight"] == (256, 256)
    assert "decoder.down_blocks.3.attentions.0.to_q.weight" not in shapes
    assert shapes["decoder.mid_block.attentions.0.group_norm.weight"] == (512,)
    assert shapes["decoder.up_blocks.0.resnets.2.conv1.weight"] == (512, 1024, 3, 3)
    assert shapes["decoder.up_blocks.6.resnets.2.conv2.weight"] == (32, 32, 3, 3)
    assert shapes["decoder.down_blocks.5.downsamplers.0.conv.weight"] == (512, 512, 3, 3)
    assert "decoder.down_blocks.6.downsamplers.0.conv.weight" not in shapes
    encoder = sum(np.prod(s) for k, s in shapes.items() if k.startswith("encoder."))
    decoder = sum(np.prod(s) for k, s in shapes.items() if k.startswith("decoder."))
    flux = sum(p.numel() for p in flux_vae.parameters())
    assert len(state) == 556
    assert abs((encoder + decoder + flux) * 2 / 1e6 - 379) < 2  # MB in bf16


def _tiny_state(spec=TINY_VAE_SPEC, seed=1):
    torch.manual_seed(seed)
    model = TransparentVAE(TransparentVAESpec.from_yaml(spec))
    for param in model.parameters():  # no zero-initialised layers: loading must show
        param.data.normal_(0, 0.02)
    return model, model.state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_load_strictly_and_name_every_bad_key(tmp_path, suffix):
    from safetensors.torch import save_file

    _, state = _tiny_state()

    def write(state, name):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".pth":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path

    # The published file bundles the Flux VAE under sd_vae.*: allowed, ignored.
    good = write({**state, "sd_vae.decoder.conv_in.weight": torch.zeros(3)}, "good")
    loaded = load_transparent_vae(TINY_VAE_SPEC, good)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    bad = dict(state)
    del bad["decoder.conv_out.bias"], bad["encoder.blocks.16.weight"]
    bad["decoder.extra.weight"] = torch.zeros(1)
    bad["encoder.blocks.18.bias"] = torch.zeros(1)
    bad["decoder.conv_in.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ModelFileError) as error:
        load_transparent_vae(TINY_VAE_SPEC, write(bad, "bad"))
    message = str(error.value)
    assert "bad" + suffix in message
    assert "2 missing key(s): decoder.conv_out.bias, encoder.blocks.16.weight" in message
    assert "2 unexpected key(s): decoder.extra.weight, encoder.blocks.18.bias" in message
    assert "decoder.conv_in.weight (1, 2, 3, 3) (model (16, 3, 3, 3))" in message
    # The tiny file does not fit the published architecture, and says so.
    with pytest.raises(ModelFileError, match=r"missing key\(s\).*unexpected key\(s\)"):
        load_transparent_vae(PUBLISHED_VAE_SPEC, good, dtype=torch.bfloat16)
    with pytest.raises(ModelFileError, match=r"TransparentVAE\.pth"):
        load_transparent_vae(TINY_VAE_SPEC, tmp_path / "TransparentVAE.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match=r"junk\.pth"):
        load_transparent_vae(TINY_VAE_SPEC, tmp_path / "junk.pth")


def test_spec_errors_name_the_key(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("encoder_channels: [8, 8]\nlatnet_channels: 16\n")
    with pytest.raises(ConfigError, match="latnet_channels"):
        TransparentVAESpec.from_yaml(path)
    path.write_text("encoder_channels: [8, 8]\n")
    with pytest.raises(ConfigError, match="encoder_channels"):
        TransparentVAESpec.from_yaml(path)
    for ground in ("1.5", "[1, 1]"):
        path.write_text(f"ground: {ground}\n")
        with pytest.raises(ConfigError, match="ground"):
            TransparentVAESpec.from_yaml(path)


@pytest.mark.parametrize("ground", [0.0, 1.0, (0.9, 0.8, 0.7)], ids=["grey", "white", "rgb"])
def test_clear_pixels_reach_the_flux_vae_as_the_ground(ground):
    """Premultiplied over the spec's ground: clear pixels are the ground, opaque ones their
    colour in [-1, 1], half-covered ones halfway; 0 is the published feed exactly."""
    spec = TransparentVAESpec.from_yaml(TINY_VAE_SPEC)
    vae = TransparentVAE(dataclasses.replace(spec, ground=ground))
    rgba = torch.rand(2, 4, 16, 16)
    rgba[:, 3, :4] = 0.0
    rgba[:, 3, 4:8] = 1.0
    feed = vae.flux_feed(rgba)
    expected_ground = torch.as_tensor(ground).reshape(-1, 1, 1).expand(3, 4, 16)
    assert torch.allclose(feed[:, :, :4], expected_ground.expand(2, 3, 4, 16))
    assert torch.allclose(feed[:, :, 4:8], rgba[:, :3, 4:8] * 2 - 1)
    half = (rgba[:, :3] * 2 - 1) * rgba[:, 3:] + expected_ground[:, :1] * (1 - rgba[:, 3:])
    assert torch.allclose(feed, half)
    if ground == 0.0:
        assert torch.equal(feed, (rgba[:, :3] * 2 - 1) * rgba[:, 3:])


def test_padding_keeps_covered_colour_and_fills_clear_pixels_from_it():
    rgba = torch.zeros(1, 4, 32, 48)
    rgba[:, 0, :, :20] = 0.9  # red, covered on the left
    rgba[:, 3, :, :20] = 1.0
    rgba[:, 1, :, 28:] = 1.0  # green, covered on the right
    rgba[:, 3, :, 28:] = 1.0
    rgba[:, 2, :, 20:28] = 0.7  # blue garbage under clear pixels must vanish
    padded = pad_rgb(rgba)
    assert torch.allclose(padded[:, :, :, :20], rgba[:, :3, :, :20], atol=1e-5)
    assert torch.allclose(padded[:, :, :, 28:], rgba[:, :3, :, 28:], atol=1e-5)
    gap = padded[0, :, :, 20:28]
    assert float(gap[2].abs().max()) < 1e-5  # nothing from the garbage
    assert (gap[0] + gap[1] > 0.5).all()  # filled with the neighbours' colour
    assert float(gap[0, :, 0].mean()) > float(gap[0, :, -1].mean())  # red fades to the right


def reference_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The area filter written out pixel by pixel: each output pixel is the mean of the
    source over its cell, a source pixel counting by how much of it lies in the cell
    (overlaps under 1e-3 pixel ignored), over the cell's area."""

    def cover(index: int, cell: int, source: int, target: int) -> float:
        scale = source / target
        start, end = cell * scale, min((cell + 1) * scale, source)
        overlap = max(0.0, min(index + 1, end) - max(index, start))
        return overlap / (end - start) if overlap > 1e-3 else 0.0

    source_h, source_w = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]))
    for y in range(height):
        for x in range(width):
            for i in range(source_h):
                wy = cover(i, y, source_h, height)
                for j in range(source_w) if wy else ():
                    out[y, x] += wy * cover(j, x, source_w, width) * image[i, j]
    return out


def published_padding(rgba: np.ndarray, shrink: float = 1.2) -> np.ndarray:
    """The published LayerDiffuse padding as its authors run it, with OpenCV: area-reduced
    pyramid of premultiplied colour and alpha, bilinear enlargement back up."""
    import cv2

    colour, alpha = rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]
    levels = [(colour, alpha)]
    while min(levels[-1][1].shape[:2]) > 1:
        height, width = levels[-1][1].shape[:2]
        size = (int(width / shrink), int(height / shrink))
        colour = cv2.resize(levels[-1][0], size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(levels[-1][1], size, interpolation=cv2.INTER_AREA)[..., None]
        levels.append((colour.reshape(size[1], size[0], 3), alpha.reshape(size[1], size[0], 1)))
    top_colour, top_alpha = levels[-1]
    estimate = top_colour.sum((0, 1), keepdims=True) / max(top_alpha.sum(), 1e-8)
    for colour, alpha in reversed(levels):
        height, width = alpha.shape[:2]
        estimate = cv2.resize(estimate, (width, height), interpolation=cv2.INTER_LINEAR)
        estimate = colour + estimate.reshape(height, width, 3) * (1 - alpha)
    return estimate


@pytest.mark.parametrize(
    ("source", "target"),
    [((23, 17), (19, 14)), ((12, 9), (10, 7)), ((16, 12), (8, 6)), ((7, 5), (5, 4)),
     ((9, 30), (7, 25)), ((5, 3), (1, 2)), ((11, 11), (1, 1))],
)  # fmt: skip
def test_area_reduction_is_the_fractional_overlap_filter(source, target):
    import cv2

    image = np.random.default_rng(sum(source)).random((*source, 3), dtype=np.float32)
    got = area_downscale(torch.from_numpy(image).permute(2, 0, 1)[None], target)
    got = got[0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - reference_area(image, *target)).max() < 1e-6
    opencv = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(got - opencv.reshape(got.shape)).max() < 1e-6


@pytest.mark.parametrize("kind", ["smooth", "noisy"])
def test_padding_matches_the_published_opencv_pipeline(kind):
    rng = np.random.default_rng(0 if kind == "smooth" else 1)
    height, width = 96, 80
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    if kind == "smooth":
        alpha = np.clip(1.5 - 4 * np.hypot(yy - 0.45, xx - 0.4), 0, 1)
        colour = np.stack([yy, xx, 1 - yy], axis=-1)
    else:
        alpha = (rng.random((height, width)) < 0.3) * rng.random((height, width))
        colour = rng.random((height, width, 3))
    rgba = np.concatenate([colour, alpha[..., None]], axis=-1).astype(np.float32)
    want = published_padding(rgba)
    tensor = torch.from_numpy(rgba).permute(2, 0, 1)[None]
    got = pad_rgb(tensor)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want).max() < 1e-4
    partly_clear = (alpha > 0) & (alpha < 1)
    assert np.abs(got - want)[partly_clear].max() < 1e-4


@pytest.mark.parametrize(("flip", "turns"), _AUGMENTATIONS)
def test_each_decode_augmentation_is_undone_exactly(flip, turns):
    tensor = torch.arange(2 * 3 * 8 * 16, dtype=torch.float32).reshape(2, 3, 8, 16)
    changed = _augment(tensor, flip, turns)
    assert bool(flip or turns) == (
        changed.shape != tensor.shape or not torch.equal(changed, tensor)
    )
    assert torch.equal(_undo(changed, flip, turns), tensor)


@pytest.fixture(scope="module")
def flux():
    return load_flux(TINY_SPEC)


@pytest.fixture(scope="module")
def trained(flux, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    write_ink_shapes(folder, count=40, size=TRAINING.size, seed=3)
    images, _ = read_rgba_folder(folder, TRAINING.size)
    spec = TransparentVAESpec.from_yaml(TINY_VAE_SPEC)
    index = held_out(len(images), TRAINING.holdout)
    held = images[index]
    train = images[[i for i in range(len(images)) if i not in index]]
    model, history = train_transparent_vae(flux.vae, spec, train, TRAINING)
    path = tmp_path_factory.mktemp("vae") / "stencil-transparent-vae.pth"
    save_weights(model, path)
    return model, path, held, history


def test_transparent_vae_training_logs_progress(flux, tmp_path, caplog):
    write_ink_shapes(tmp_path, count=4, size=32, seed=1)
    images, _ = read_rgba_folder(tmp_path, 32)
    spec = TransparentVAESpec.from_yaml(TINY_VAE_SPEC)
    short = schema_settings(
        VaeTraining, {"size": 32, "steps": 4, "batch_size": 2, "lr": 1e-3, "holdout": 1}
    )
    with caplog.at_level("INFO", logger="blkassist.progress"):
        train_transparent_vae(flux.vae, spec, images, short, progress=ProgressSettings(2, 1e9))
    lines = [r.getMessage() for r in caplog.records if r.name == "blkassist.progress"]
    assert [line.split(" (")[0] for line in lines] == [
        f"transparent VAE: step {n}/4" for n in (1, 2, 4)
    ]
    assert all(" steps/s, ETA " in line and "loss " in line and "lr " in line for line in lines)


def test_trained_tiny_vae_round_trip_recovers_alpha(flux, trained):
    model, path, held, _ = trained
    errors, decoded = round_trip_errors(model, flux.vae, held)
    assert errors["alpha_mae"] <= ALPHA_MAE_LIMIT, errors
    assert errors["alpha_mae"] <= 0.6 * float(held[:, 3].mean()), errors  # not a guess
    untrained = TransparentVAE(model.spec).eval()
    assert round_trip_errors(untrained, flux.vae, held)[0]["alpha_mae"] > 3 * ALPHA_MAE_LIMIT
    # Value range: every channel in [0, 1], with both clear and opaque pixels.
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert (decoded[:, 3] < 0.05).any() and (decoded[:, 3] > 0.95).any()
    # Channel order R, G, B, A: the 4th channel is the alpha; reading it alpha-first
    # (the older SDXL convention) is far off.
    alpha = held[:, 3]
    assert (decoded[:, 0] - alpha).abs().mean() > 3 * errors["alpha_mae"]
    covered = alpha > 0.9
    colour_error = (decoded[:, :3] - held[:, :3]).abs().mean(1)[covered].mean()
    shuffled = (decoded[:, [2, 0, 1]] - held[:, :3]).abs().mean(1)[covered].mean()
    assert colour_error < shuffled
    # The saved weights reload strictly into the same decode.
    again = load_transparent_vae(TINY_VAE_SPEC, path)
    latent = model.encode(flux.vae, held[:1])
    assert torch.equal(again.decode(flux.vae, latent), model.decode(flux.vae, latent))


def test_eight_way_decode_is_a_per_pixel_median_of_the_passes(flux, trained):
    model = trained[0]
    latent = model.encode(flux.vae, trained[2][:1])
    augmented = model.decode(flux.vae, latent, augment=True)
    single = model.decode(flux.vae, latent, augment=False)
    rgb = model.flux_rgb(flux.vae, latent)
    with torch.no_grad():
        passes = torch.stack(
            [
                _undo(model.decoder(_augment(rgb, f, t), _augment(latent, f, t)).clamp(0, 1), f, t)
                for f, t in _AUGMENTATIONS
            ]
        )
    assert torch.allclose(single, passes[0], atol=1e-6)
    below = (passes <= augmented + 1e-6).sum(0)
    above = (passes >= augmented - 1e-6).sum(0)
    assert (below >= 4).all() and (above >= 4).all()  # half the passes on either side


LATENT = {
    "seed": 3,
    "width": 32,
    "height": 32,
    "steps": 2,
    "guidance": 3.5,
    "max_sequence_length": 32,
    "prompt": "FG layer, ink cloud",
    "output_type": "latent",
}


def test_bundled_flux_vae_is_compared_with_the_one_in_use(flux, trained, tmp_path, caplog):
    model, _, _, _ = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bundled = {f"sd_vae.{k}": v.half() for k, v in flux.vae.state_dict().items()}
    matching = tmp_path / "TransparentVAE.pth"
    torch.save({**state, **bundled}, matching)
    with caplog.at_level("WARNING"):
        loaded = load_transparent_vae(TINY_VAE_SPEC, matching, flux_vae=flux.vae)
    assert loaded.bundled_flux_vae["matches"], loaded.bundled_flux_vae  # fp16 copy: equal
    assert not caplog.records
    key = "decoder.conv_out.weight"
    bundled[f"sd_vae.{key}"] = bundled[f"sd_vae.{key}"] * 1.1
    del bundled["sd_vae.encoder.conv_in.bias"]
    other = tmp_path / "other.pth"
    torch.save({**state, **bundled}, other)
    with caplog.at_level("WARNING"):
        loaded = load_transparent_vae(TINY_VAE_SPEC, other, flux_vae=flux.vae)
    summary = loaded.bundled_flux_vae
    assert not summary["matches"] and summary["only_in_flux_vae"] == ["encoder.conv_in.bias"]
    assert [d.split(" ")[0] for d in summary["differing"]] == [key]
    message = caplog.records[-1].getMessage()
    assert key in message and "encoder.conv_in.bias" in message and "not the Flux VAE" in message
    assert load_transparent_vae(TINY_VAE_SPEC, other).bundled_flux_vae is None  # not asked


def test_layer_lora_is_fused_into_the_transformer(tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = random_lora_file(tmp_path, "layerlora.safetensors", seed=0)
    base = render(load_flux(TINY_SPEC).pipeline(), **LATENT)
    as_adapter = load_flux(TINY_SPEC).pipeline()
    as_adapter.load_lora_weights(str(path), adapter_name="check")
    expected = render(as_adapter, **LATENT)
    pipe = load_flux(TINY_SPEC).pipeline()
    record = fuse_layer_lora(pipe, path)
    fused = render(pipe, **LATENT)
    assert record == {"file": str(path), "sha256": sha256_file(path), "scale": 1.0, "fused": True,
                      "fused_into": ["transformer"]}  # fmt: skip
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())
    assert torch.allclose(fused, expected, atol=1e-4)
    assert (fused - base).abs().max() > 1e-2
    # A style LoRA still stacks on top, and comes off again.
    style = random_lora_file(tmp_path, "style.safetensors", seed=1)
    load_adapter(pipe, style, 1.0, name="style")
    assert (render(pipe, **LATENT) - fused).abs().max() > 1e-2
    pipe.delete_adapters("style")
    assert torch.allclose(render(pipe, **LATENT), fused, atol=1e-6)
    with pytest.raises(ModelFileError, match=r"nothing\.safetensors"):
        fuse_layer_lora(pipe, tmp_path / "nothing.safetensors")


def test_layer_lora_text_encoder_keys_are_fused_too(tmp_path):
    path = random_lora_file(tmp_path, "layerlora.safetensors", seed=2, text_encoder=True)
    prompt = {"prompt": "ink circle", "prompt_2": None, "max_sequence_length": 32}
    base = load_flux(TINY_SPEC).pipeline().encode_prompt(**prompt)[1]
    as_adapter = load_flux(TINY_SPEC).pipeline()
    as_adapter.load_lora_weights(str(path), adapter_name="check")
    expected_pooled = as_adapter.encode_prompt(**prompt)[1]
    expected = render(as_adapter, **LATENT)
    pipe = load_flux(TINY_SPEC).pipeline()
    record = fuse_layer_lora(pipe, path)
    assert record["fused_into"] == ["transformer", "text_encoder"]
    assert not getattr(pipe.text_encoder, "peft_config", None)  # fused, adapter gone
    pooled = pipe.encode_prompt(**prompt)[1]
    assert (expected_pooled - base).abs().max() > 1e-3  # the CLIP keys matter
    assert torch.allclose(pooled, expected_pooled, atol=1e-5)
    assert torch.allclose(render(pipe, **LATENT), expected, atol=1e-4)


def test_layer_lora_with_keys_diffusers_cannot_apply_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    path = random_lora_file(tmp_path, "layerlora.safetensors", seed=3)
    state = load_file(path)
    t5_key = "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    state[t5_key] = torch.zeros(4, 32)
    save_file(state, path)
    pipe = load_flux(TINY_SPEC).pipeline()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(ModelFileError, match=re.escape(t5_key)):
        fuse_layer_lora(pipe, path)
    after = pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing fused in part


def test_generated_assets_are_rgba_with_real_alpha_and_provenance(flux, trained, tmp_path):
    model, vae_path, _, _ = trained
    layer = random_lora_file(tmp_path, "layerlora.safetensors", seed=0)
    style = random_lora_file(tmp_path, "style.safetensors", seed=1)
    components = load_flux(TINY_SPEC)
    prompts = ["ink cloud, thick outline", {"prompt": "cube, thin lines", "role": "MG",
                                            "aspect": "2:1"}]  # fmt: skip
    record = vae_identity(str(TINY_VAE_SPEC), str(vae_path))
    settings = section_with_defaults(
        {"prompts": prompts, "loras": [{"file": str(style), "scale": 0.5}], "seeds": [0, 1],
         "megapixels": 48 * 48 / 1024**2, "steps": 2, "max_sequence_length": 32},
        "stencil.assets.test",
    )  # fmt: skip
    del settings["prompts"]
    records = generate_assets(
        components,
        model,
        prompts,
        tmp_path / "out",
        vae_record=record,
        layer_lora=layer,
        **settings,
    )
    assert len(records) == 4
    for entry in records:
        with Image.open(tmp_path / "out" / entry["image"]) as image:
            assert image.mode == "RGBA" and image.size == (entry["width"], entry["height"])
            clear, opaque = alpha_share(image)
        assert clear < 0.99 and opaque < 0.99, (entry["image"], clear, opaque)
        assert clear > 0.01 or 1 - clear - opaque > 0.01  # some see-through
        # What the demo's assets on the learned ink model pass (test_stencil_ink), random
        # weights fail: no opaque body, strokes see-through.
        assert not clear_with_opaque_ink(entry["alpha"]), entry["alpha"]
        assert entry["width"] % 16 == 0 and entry["height"] % 16 == 0
    wide = [r for r in records if r["role"] == "MG"]
    assert all(r["width"] == 2 * r["height"] for r in wide)
    sidecar = json.loads((tmp_path / "out" / f"{records[1]['image'][:-4]}.json").read_text())
    assert sidecar["prompt"] == "ink cloud, thick outline" and sidecar["seed"] == 1
    assert sidecar["text"] == "FG layer, ink cloud, thick outline, transparent background"
    assert sidecar["layer_lora"]["sha256"] == sha256_file(layer)
    assert sidecar["loras"] == [{"file": str(style), "sha256": sha256_file(style), "scale": 0.5}]
    assert sidecar["transparent_vae"]["sha256"] == sha256_file(vae_path)
    assert sidecar["model"]["identity"] == components.identity["model"]
    with Image.open(tmp_path / "out" / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGB" and sheet.size[0] >= 2 * 48
    assert not getattr(components.transformer, "peft_config", {})  # style LoRA removed


def test_shapes_cover_every_kind_with_soft_edges(tmp_path):
    paths = write_ink_shapes(tmp_path, count=len(KINDS), size=48, seed=0)
    assert sorted(p.name.split("-")[0] for p in paths) == sorted(KINDS)
    for path in paths:
        with Image.open(path) as image:
            alpha = np.asarray(image)[..., 3]
        assert image.mode == "RGBA" and (alpha == 0).any() and alpha.max() >= 150
        assert ((alpha > 0) & (alpha < alpha.max())).any(), path.name  # anti-aliased
