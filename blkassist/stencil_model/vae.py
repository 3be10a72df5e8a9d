"""The Flux transparent VAE: an offset encoder that hides alpha in the Flux latent, and a
decoder that reads RGBA back from the Flux VAE's RGB decode plus that latent.

Conventions (checked by the round-trip tests):
- Images are float tensors (B, C, H, W) in [0, 1]; RGBA channel order is R, G, B, A
  everywhere: the encoder's input is the padded RGB followed by alpha, and the decoder's
  4-channel output is R, G, B, A (straight, not premultiplied colour).
- The Flux VAE sees the colour premultiplied in [-1, 1] over the spec's `ground`: clear
  pixels are neutral grey (0) for the published weights (see `TransparentVAE.flux_feed`).
- `encode` returns the *unscaled* Flux latent (what `AutoencoderKL.decode` takes): the
  posterior mean plus std times the offset, in place of a Gaussian sample. Flux's
  transformer works on `scaling_factor * (latent - shift_factor)`; see `to_flux`/`from_flux`.

The module and parameter names follow the published `TransparentVAE.pth`
("encoder.blocks.N.*", "decoder.*", and the Flux VAE under "sd_vae.*"), so those weights load
with a strict key check.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from blkassist.errors import ConfigError, ModelFileError
from blkassist.stencil_model.settings import TransparentVAESpec

log = logging.getLogger(__name__)

FLUX_VAE_PREFIX = "sd_vae."  # the published file also carries the Flux VAE it was made with
_AUGMENTATIONS = tuple((flip, turns) for flip in (False, True) for turns in range(4))


class OffsetEncoder(nn.Module):
    """RGBA (padded RGB, then alpha) -> latent offset at H/8: nine 3x3 convolutions with SiLU
    between them, halving at the 3rd, 5th and 7th; the last one starts at zero so an
    untrained encoder leaves the Flux latent as it is."""

    def __init__(self, channels: tuple[int, ...], latent_channels: int, zero_init: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 4
        for index, width in enumerate(channels):
            stride = 2 if index in (2, 4, 6) else 1
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1), nn.SiLU()]
            previous = width
        last = nn.Conv2d(previous, latent_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.blocks = nn.Sequential(*layers, last)

    def forward(self, padded_rgb_alpha: torch.Tensor) -> torch.Tensor:
        return self.blocks(padded_rgb_alpha)


class TransparentDecoder(nn.Module):
    """A UNet from the Flux VAE's RGB decode (full size, [0, 1]) to RGBA; the latent joins
    through a zero-initialised 1x1 convolution where the features reach H/8."""

    LATENT_LEVEL = 3  # after three halvings

    def __init__(self, spec: TransparentVAESpec):
        super().__init__()
        from diffusers.models.unets.unet_2d_blocks import (
            UNetMidBlock2D,
            get_down_block,
            get_up_block,
        )

        widths = spec.block_out_channels
        levels = len(widths)
        common = {
            "resnet_eps": 1e-5,
            "resnet_act_fn": "silu",
            "resnet_groups": spec.norm_num_groups,
            "attention_head_dim": spec.attention_head_dim,
            "resnet_time_scale_shift": "default",
            "temb_channels": None,
            "dropout": 0.0,
        }
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(spec.latent_channels, widths[2], 1)
        if spec.zero_init:
            nn.init.zeros_(self.latent_conv_in.weight)
            nn.init.zeros_(self.latent_conv_in.bias)
        self.down_blocks = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            kind = "AttnDownBlock2D" if level in spec.attention_levels else "DownBlock2D"
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=spec.layers_per_block,
                    in_channels=previous,
                    out_channels=width,
                    add_downsample=level < levels - 1,
                    downsample_padding=1,
                    downsample_type="conv",
                    **common,
                )
            )
            previous = width
        self.mid_block = UNetMidBlock2D(
            in_channels=widths[-1],
            temb_channels=None,
            resnet_eps=1e-5,
            resnet_act_fn="silu",
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=spec.attention_head_dim,
            resnet_groups=spec.norm_num_groups,
            attn_groups=None,
            add_attention=True,
        )
        self.up_blocks = nn.ModuleList()
        reversed_widths = list(reversed(widths))
        previous = reversed_widths[0]
        for index, width in enumerate(reversed_widths):
            level = levels - 1 - index
            kind = "AttnUpBlock2D" if level in spec.attention_levels else "UpBlock2D"
            self.up_blocks.append(
                get_up_block(
                    kind,
                    num_layers=spec.layers_per_block + 1,
                    in_channels=reversed_widths[min(index + 1, levels - 1)],
                    out_channels=width,
                    prev_output_channel=previous,
                    add_upsample=index < levels - 1,
                    upsample_type="conv",
                    **common,
                )
            )
            previous = width
        self.conv_norm_out = nn.GroupNorm(spec.norm_num_groups, widths[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], 4, 3, padding=1)

    def forward(self, rgb: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        latent_features = self.latent_conv_in(latent)
        sample = self.conv_in(rgb)
        skips = (sample,)
        for level, block in enumerate(self.down_blocks):
            if level == self.LATENT_LEVEL:
                sample = sample + latent_features
            sample, more = block(hidden_states=sample, temb=None)
            skips += more
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            count = len(block.resnets)
            sample = block(sample, skips[-count:], None)
            skips = skips[:-count]
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


@functools.cache
def area_weights(source: int, target: int) -> torch.Tensor:
    """(target, source) weights of OpenCV's INTER_AREA reduction along one axis: output
    pixel d averages the source interval [d * s, (d + 1) * s), s = source / target, each
    source pixel weighted by the part of it inside (slivers under 1e-3 pixel dropped, as
    OpenCV does), over the cell's width. Cached: every level of every image reuses it."""
    scale = source / target
    weights = torch.zeros(target, source, dtype=torch.float64)
    for d in range(target):
        start = d * scale
        end = start + scale
        width = min(scale, source - start)
        first = min(math.ceil(start), source - 1)
        last = min(math.floor(end), source - 1)
        first = min(first, last)
        if first - start > 1e-3:
            weights[d, first - 1] = (first - start) / width
        weights[d, first:last] = 1 / width
        if end - last > 1e-3:
            weights[d, last] = min(end - last, 1.0, width) / width
    return weights


@functools.cache
def area_band(source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """area_weights as (indices, weights), each (target, K): an output pixel draws on at
    most K = ceil(source / target) + 1 neighbouring source pixels."""
    weights = area_weights(source, target)
    width = int((weights > 0).sum(dim=1).max())
    first = (weights > 0).to(torch.int8).argmax(dim=1)
    indices = (first[:, None] + torch.arange(width)).clamp(max=source - 1)
    return indices, weights.gather(1, indices) * (first[:, None] + torch.arange(width) < source)


def _reduce(images: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    indices, weights = area_band(images.shape[dim], size)
    weights = weights.to(images)
    shape = [1] * images.ndim
    shape[dim] = size
    out = 0
    for k in range(indices.shape[1]):
        out = out + images.index_select(dim, indices[:, k].to(images.device)) * weights[
            :, k
        ].reshape(shape)
    return out


def area_downscale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) reduced to `size` (height, width) by OpenCV's INTER_AREA filter, also
    for non-integer factors (fractional overlaps), where F.interpolate's "area" mode is
    adaptive pooling over whole pixels. Separable and banded: a few shifted multiply-adds
    per axis."""
    return _reduce(_reduce(images, size[0], -2), size[1], -1)


def pad_rgb(rgba: torch.Tensor, shrink: float = 1.2) -> torch.Tensor:
    """Colour spread from covered pixels into clear ones, so that the Flux VAE and the offset
    encoder never see a hard colour edge at the silhouette.

    Premultiplied colour and alpha are shrunk by `shrink` per level (OpenCV's area filter,
    as the published LayerDiffuse code does) down to one pixel; from the coarsest level (the
    alpha-weighted mean colour) up, each level's colour is its own premultiplied colour plus
    the bilinearly enlarged coarser estimate where it is uncovered.
    """
    colour, alpha = rgba[:, :3], rgba[:, 3:4]
    levels = [(colour * alpha, alpha)]
    while min(levels[-1][1].shape[-2:]) > 1:
        height, width = levels[-1][1].shape[-2:]
        size = (max(1, int(height / shrink)), max(1, int(width / shrink)))
        levels.append(tuple(area_downscale(t, size) for t in levels[-1]))
    premultiplied, coverage = levels[-1]
    estimate = premultiplied.sum((2, 3), keepdim=True) / coverage.sum(
        (2, 3), keepdim=True
    ).clamp_min(1e-8)
    for premultiplied, coverage in reversed(levels):
        estimate = F.interpolate(
            estimate, size=coverage.shape[-2:], mode="bilinear", align_corners=False
        )
        estimate = premultiplied + estimate * (1 - coverage)
    return estimate


def _augment(tensor: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    if flip:
        tensor = torch.flip(tensor, dims=(3,))
    return torch.rot90(tensor, k=turns, dims=(2, 3))


def _undo(tensor: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    tensor = torch.rot90(tensor, k=-turns, dims=(2, 3))
    return torch.flip(tensor, dims=(3,)) if flip else tensor


class TransparentVAE(nn.Module):
    """Offset encoder + RGBA decoder; the frozen Flux VAE is passed in, not owned, so the
    state dict holds exactly the transparency weights."""

    def __init__(self, spec: TransparentVAESpec):
        super().__init__()
        self.spec = spec
        self.encoder = OffsetEncoder(spec.encoder_channels, spec.latent_channels, spec.zero_init)
        self.decoder = TransparentDecoder(spec)

    # -- encoding ------------------------------------------------------------------------
    def encode(self, flux_vae, rgba: torch.Tensor) -> torch.Tensor:
        """RGBA in [0, 1] -> the unscaled Flux latent carrying the alpha."""
        self._check_size(rgba)
        dtype = next(flux_vae.parameters()).dtype
        posterior = flux_vae.encode(self.flux_feed(rgba).to(dtype)).latent_dist
        return posterior.mean + posterior.std * self.offset(rgba).to(dtype)

    def flux_feed(self, rgba: torch.Tensor) -> torch.Tensor:
        """What the Flux VAE encodes: the colour in [-1, 1] premultiplied by alpha over the
        spec's ground (clear pixels take the ground's value; 0 is the published grey)."""
        alpha = rgba[:, 3:4]
        ground = torch.as_tensor(self.spec.ground, dtype=rgba.dtype, device=rgba.device)
        return (rgba[:, :3] * 2 - 1) * alpha + ground.reshape(1, -1, 1, 1) * (1 - alpha)

    def offset(self, rgba: torch.Tensor) -> torch.Tensor:
        """The encoder's offset in units of the posterior std (offset_scale applied)."""
        padded = torch.cat([pad_rgb(rgba), rgba[:, 3:4]], dim=1).to(self._dtype)
        return self.encoder(padded) * self.spec.offset_scale

    # -- decoding ------------------------------------------------------------------------
    def flux_rgb(self, flux_vae, latent: torch.Tensor) -> torch.Tensor:
        """The Flux VAE's own decode of the latent, in [0, 1] (not clipped)."""
        dtype = next(flux_vae.parameters()).dtype
        return flux_vae.decode(latent.to(dtype)).sample * 0.5 + 0.5

    def decode_once(self, flux_vae, latent: torch.Tensor) -> torch.Tensor:
        """RGBA from one decoder pass (what training optimises); not clipped."""
        rgb = self.flux_rgb(flux_vae, latent)
        return self.decoder(rgb.to(self._dtype), latent.to(self._dtype))

    @torch.no_grad()
    def decode(
        self, flux_vae, latent: torch.Tensor, augment: bool = True, rgb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RGBA in [0, 1]. With `augment`, the decoder runs on the 8 flips/rotations of its
        inputs; each result is clipped, turned back, and the per-pixel median is kept. `rgb`:
        the latent's `flux_rgb`, where the caller has it already."""
        rgb = (self.flux_rgb(flux_vae, latent) if rgb is None else rgb).to(self._dtype)
        latent = latent.to(self._dtype)
        if not augment:
            return self.decoder(rgb, latent).clamp(0, 1)
        results = []
        for flip, turns in _AUGMENTATIONS:
            out = self.decoder(_augment(rgb, flip, turns), _augment(latent, flip, turns))
            results.append(_undo(out.clamp(0, 1), flip, turns))
        return torch.stack(results).median(dim=0).values

    @property
    def _dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    def _check_size(self, image: torch.Tensor) -> None:
        height, width = image.shape[-2:]
        multiple = self.spec.size_multiple
        if height % multiple or width % multiple:
            raise ConfigError(
                f"image size {width}x{height}: the transparent VAE needs sides that are "
                f"multiples of {multiple}"
            )


def to_flux(latent: torch.Tensor, flux_vae) -> torch.Tensor:
    """Unscaled VAE latent -> the transformer's latent space."""
    config = flux_vae.config
    return (latent - config.shift_factor) * config.scaling_factor


def from_flux(latent: torch.Tensor, flux_vae) -> torch.Tensor:
    config = flux_vae.config
    return latent / config.scaling_factor + config.shift_factor


# -- weights --------------------------------------------------------------------------
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .pth (a pickled dict of tensors, read without running code) or a
    .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: transparent VAE weights not found. Fix: put the published "
            "TransparentVAE.pth there, or set stencil.vae.weights to null to train a tiny one."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same advice
        raise ModelFileError(f"{path}: not a readable weight file ({error}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: expected a dict of tensors (a state dict).")
    return state


def check_keys(model: TransparentVAE, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict that does not fit the model exactly, naming every missing and
    unexpected key and every shape mismatch. Keys of the bundled Flux VAE ("sd_vae.*") are
    allowed here: the Flux VAE comes from the Flux model (compare_bundled_flux_vae checks
    them against it)."""
    expected = model.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(FLUX_VAE_PREFIX)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k} {tuple(given[k].shape)} (model {tuple(expected[k].shape)})"
        for k in set(expected) & set(given)
        if given[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {', '.join(shapes)}")
    if problems:
        raise ModelFileError(
            f"{source}: the weights do not fit the transparent VAE spec: "
            + "; ".join(problems)
            + ". Fix: use the published TransparentVAE.pth with "
            "resources/stencil/transparent_vae.yaml, or a file trained for the spec in use."
        )


def compare_bundled_flux_vae(
    state: dict[str, torch.Tensor], flux_vae, source: str
) -> dict[str, object] | None:
    """Compare the Flux VAE a published file carries ("sd_vae.*") with the one in use,
    warning where they differ: the transparent VAE learnt its offsets against the bundled
    one. Values count as equal within the coarser dtype's precision (a file in fp16 beside
    a model in bf16). None when the file bundles no Flux VAE."""
    bundled = {
        k.removeprefix(FLUX_VAE_PREFIX): v
        for k, v in state.items()
        if k.startswith(FLUX_VAE_PREFIX)
    }
    if not bundled:
        return None
    loaded = flux_vae.state_dict()
    differing = []
    for key in sorted(set(bundled) & set(loaded)):
        mine, theirs = bundled[key], loaded[key]
        if mine.shape != theirs.shape:
            differing.append(f"{key} (shape {tuple(mine.shape)}, in use {tuple(theirs.shape)})")
            continue
        precision = max(torch.finfo(t.dtype).eps for t in (mine, theirs))
        reference = theirs.detach().double().cpu()
        difference = float((mine.double() - reference).abs().max())
        size = float(reference.abs().max())
        if difference > precision * max(size, 1e-12):
            differing.append(f"{key} (max difference {difference:.3g}, values up to {size:.3g})")
    only_file = sorted(set(bundled) - set(loaded))
    only_flux = sorted(set(loaded) - set(bundled))
    summary = {
        "bundled_tensors": len(bundled),
        "differing": differing,
        "only_in_file": only_file,
        "only_in_flux_vae": only_flux,
        "matches": not (differing or only_file or only_flux),
    }
    if not summary["matches"]:
        problems = [
            f"{len(differing)} tensor(s) differ: {', '.join(differing[:5])}" if differing else "",
            f"{len(only_file)} only in the file: {', '.join(only_file[:5])}" if only_file else "",
            f"{len(only_flux)} only in the Flux VAE: {', '.join(only_flux[:5])}"
            if only_flux
            else "",
        ]
        log.warning(
            "%s: the Flux VAE bundled in the transparent VAE file (%s*) is not the Flux VAE "
            "in use: %s. The transparent VAE was made for the bundled one; expect colour and "
            "alpha errors unless the Flux model is the one it was published with.",
            source,
            FLUX_VAE_PREFIX,
            "; ".join(p for p in problems if p),
        )
    return summary


def load_transparent_vae(
    spec: str | os.PathLike | TransparentVAESpec,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    flux_vae=None,
) -> TransparentVAE:
    """The transparent VAE of `spec`, with `weights` loaded after a strict key check (or
    freshly initialised without), frozen, in eval mode. With `flux_vae` (the one in use), a
    Flux VAE bundled in the file is compared with it (`bundled_flux_vae` on the model)."""
    if not isinstance(spec, TransparentVAESpec):
        spec = TransparentVAESpec.from_yaml(spec)
    model = TransparentVAE(spec)
    model.bundled_flux_vae = None
    if weights is not None:
        state = read_weights(weights)
        check_keys(model, state, str(weights))
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
        if flux_vae is not None:
            model.bundled_flux_vae = compare_bundled_flux_vae(state, flux_vae, str(weights))
        log.info("loaded transparent VAE weights %s", weights)
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()


def save_weights(model: TransparentVAE, path: str | os.PathLike) -> None:
    """The published layout: one pickled dict of tensors ("encoder.*", "decoder.*")."""
    from blkassist.fsutil import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
