"""Device memory a GPU job needs, worked out from model configs without loading weights.

The plan states it per GPU job kind (results/NAME_plan.json, the plan line), and the lease
(devices.py) gives a job only a device with at least that much. Parameter counts come from
the architecture in the configs (a Flux diffusers folder's config.json files or a
random-model spec), by the same formulas as the modules diffusers and transformers build
(tests compare them with the real modules); activations are estimates sized for the
window or tile a job computes (bench/gpu_refine_check.py prints the measured peak beside
the estimate). Importing this module imports no torch: the workflow plans with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

GIB = 2**30
CUDA_CONTEXT = int(0.75 * GIB)  # CUDA context, cuBLAS workspaces, allocator slack
ACTIVATION_MARGIN = 1.25  # activation estimates are rough: leave a quarter more
TOKEN_WIDTHS = 16  # live activations per token in a transformer block, in hidden widths
TINY_VOCAB = {"text_encoder": 514, "text_encoder_2": 192}  # blkassist.demo.tokenizers sizes

# Defaults of the classes a spec leaves out (diffusers FluxTransformer2DModel and
# AutoencoderKL, transformers CLIPTextConfig and T5Config).
_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19,
                "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
                "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                "guidance_embeds": False}  # fmt: skip
_VAE = {"in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1,
        "latent_channels": 4, "use_quant_conv": True, "use_post_quant_conv": True,
        "mid_block_add_attention": True}  # fmt: skip
_CLIP = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
         "num_hidden_layers": 12, "max_position_embeddings": 77}  # fmt: skip
_T5 = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
       "num_heads": 8, "relative_attention_num_buckets": 32,
       "feed_forward_proj": "relu"}  # fmt: skip


@dataclass(frozen=True)
class PartSize:
    """A model part's parameters: linear-layer weights (what 8-bit quantises), the output
    features of those layers (one 8-bit scale each), and everything else."""

    linear: int = 0
    outputs: int = 0
    other: int = 0
    largest_block: int = 0  # parameters of its largest block (the transformer's)

    @property
    def parameters(self) -> int:
        return self.linear + self.other

    def bytes(self, width: int, eight_bit: bool = False) -> int:
        """Bytes held at `width` bytes per parameter (8-bit: linear weights at one byte
        plus one scale per output feature)."""
        if eight_bit:
            return self.linear + (self.outputs + self.other) * width
        return self.parameters * width

    def __add__(self, other: PartSize) -> PartSize:
        return PartSize(
            self.linear + other.linear,
            self.outputs + other.outputs,
            self.other + other.other,
            max(self.largest_block, other.largest_block),
        )


def _linear(inputs: int, outputs: int, bias: bool = True) -> PartSize:
    return PartSize(inputs * outputs, outputs, outputs if bias else 0)


def _conv(inputs: int, outputs: int, kernel: int = 3) -> PartSize:
    return PartSize(0, 0, kernel * kernel * inputs * outputs + outputs)


def _sum(parts) -> PartSize:
    total = PartSize()
    for part in parts:
        total = total + part
    return total


def transformer_size(config: Mapping) -> PartSize:
    """FluxTransformer2DModel: embedders, double-stream and single-stream blocks, output."""
    c = {**_TRANSFORMER, **config}
    width = c["num_attention_heads"] * c["attention_head_dim"]
    head = c["attention_head_dim"]
    out = c["patch_size"] ** 2 * (c["out_channels"] or c["in_channels"])
    embedders = [_linear(256, width), _linear(width, width)] * (2 if c["guidance_embeds"] else 1)
    embedders += [_linear(c["pooled_projection_dim"], width), _linear(width, width)]
    embedders += [_linear(c["joint_attention_dim"], width), _linear(c["in_channels"], width)]
    double = _sum(
        [_linear(width, 6 * width)] * 2  # norm1, norm1_context (adaptive)
        + [_linear(width, width)] * 8  # q, k, v and out of both streams
        + [PartSize(other=4 * head)]  # q/k norms of both streams
        + [_linear(width, 4 * width), _linear(4 * width, width)] * 2  # ff, ff_context
    )
    single = _sum([_linear(width, 3 * width), _linear(width, 4 * width),
                   _linear(5 * width, width), *[_linear(width, width)] * 3,
                   PartSize(other=2 * head)])  # fmt: skip
    blocks = [double] * c["num_layers"] + [single] * c["num_single_layers"]
    total = _sum(embedders + blocks + [_linear(width, 2 * width), _linear(width, out)])
    largest = max((b.parameters for b in blocks), default=0)
    return PartSize(total.linear, total.outputs, total.other, largest)


def _resnet(inputs: int, outputs: int) -> PartSize:
    shortcut = _conv(inputs, outputs, 1) if inputs != outputs else PartSize()
    norms = PartSize(other=2 * inputs + 2 * outputs)
    return _sum([norms, _conv(inputs, outputs), _conv(outputs, outputs), shortcut])


def _mid_block(channels: int, attention: bool) -> PartSize:
    parts = [_resnet(channels, channels)] * 2
    if attention:
        parts += [PartSize(other=2 * channels), *[_linear(channels, channels)] * 4]
    return _sum(parts)


def vae_size(config: Mapping) -> PartSize:
    """AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks."""
    c = {**_VAE, **config}
    widths, per_block, latent = (
        list(c["block_out_channels"]),
        c["layers_per_block"],
        c["latent_channels"],
    )
    attention = c["mid_block_add_attention"]
    parts = [_conv(c["in_channels"], widths[0])]
    previous = widths[0]
    for index, width in enumerate(widths):  # encoder
        parts += [_resnet(previous if k == 0 else width, width) for k in range(per_block)]
        if index < len(widths) - 1:
            parts.append(_conv(width, width))
        previous = width
    parts += [_mid_block(widths[-1], attention), PartSize(other=2 * widths[-1]),
              _conv(widths[-1], 2 * latent)]  # fmt: skip
    if c["use_quant_conv"]:
        parts.append(_conv(2 * latent, 2 * latent, 1))
    if c["use_post_quant_conv"]:
        parts.append(_conv(latent, latent, 1))
    reversed_widths = widths[::-1]
    parts += [_conv(latent, reversed_widths[0]), _mid_block(reversed_widths[0], attention)]
    previous = reversed_widths[0]
    for index, width in enumerate(reversed_widths):  # decoder
        parts += [_resnet(previous if k == 0 else width, width) for k in range(per_block + 1)]
        if index < len(widths) - 1:
            parts.append(_conv(width, width))
        previous = width
    parts += [PartSize(other=2 * widths[0]), _conv(widths[0], c["out_channels"])]
    return _sum(parts)


def clip_size(config: Mapping) -> PartSize:
    """CLIPTextModel (no projection)."""
    c = {**_CLIP, **config}
    h, inner = c["hidden_size"], c["intermediate_size"]
    layer = _sum([*[_linear(h, h)] * 4, _linear(h, inner), _linear(inner, h),
                  PartSize(other=4 * h)])  # fmt: skip
    embeddings = PartSize(other=(c["vocab_size"] + c["max_position_embeddings"]) * h)
    return _sum([embeddings, *[layer] * c["num_hidden_layers"], PartSize(other=2 * h)])


def t5_size(config: Mapping) -> PartSize:
    """T5EncoderModel (embeddings shared with the encoder, no biases)."""
    c = {**_T5, **config}
    d, inner = c["d_model"], c["num_heads"] * c["d_kv"]
    feed = 3 if c["feed_forward_proj"].startswith("gated-") else 2
    attention = _sum([_linear(d, inner, False)] * 3 + [_linear(inner, d, False)])
    ff = _linear(d, c["d_ff"], False)
    layer = _sum([attention, *[ff] * feed, PartSize(other=2 * d)])
    relative = PartSize(other=c["relative_attention_num_buckets"] * c["num_heads"])
    return _sum([PartSize(other=c["vocab_size"] * d), *[layer] * c["num_layers"], relative,
                 PartSize(other=d)])  # fmt: skip


_SIZERS = {"transformer": transformer_size, "vae": vae_size,
           "text_encoder": clip_size, "text_encoder_2": t5_size}  # fmt: skip


def flux_configs(model: str | Path) -> dict[str, dict]:
    """Each weighted part's architecture config: from a random-model spec, or from the
    config.json files of a diffusers folder (nothing else is read)."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        spec = yaml.safe_load(path.read_text()) or {}
        configs = {part: dict(spec.get(part) or {}) for part in _SIZERS}
        for part, vocab in TINY_VOCAB.items():  # the spec's tokenizers are generated
            configs[part].setdefault("vocab_size", vocab)
        return configs
    return {part: json.loads((path / part / "config.json").read_text()) for part in _SIZERS}


def flux_sizes(model: str | Path) -> dict[str, PartSize]:
    return {part: _SIZERS[part](config) for part, config in flux_configs(model).items()}


def refine_job_memory(
    model: str | Path,
    *,
    quantize: bool,
    tile: int,
    tiles_per_forward: int,
    max_sequence_length: int,
    width: int = 2,
) -> dict:
    """Device bytes of a refinement tile job on CUDA (bf16: `width` 2), stage by stage,
    in the order the refiner loads: encode the prompt (text encoders alone), place the
    transformer (8-bit blocks so far plus one full-precision block), sample (transformer,
    VAE, a forward group's activations, one window through the VAE)."""
    sizes = flux_sizes(model)
    transformer = sizes["transformer"]
    t_config = {**_TRANSFORMER, **flux_configs(model)["transformer"]}
    hidden = t_config["num_attention_heads"] * t_config["attention_head_dim"]
    held = transformer.bytes(width, eight_bit=quantize)
    vae = sizes["vae"].bytes(width)
    encoders = sizes["text_encoder"].bytes(width) + sizes["text_encoder_2"].bytes(width)
    t5_width = flux_configs(model)["text_encoder_2"].get("d_model", _T5["d_model"])
    encode_activations = max_sequence_length * t5_width * width * TOKEN_WIDTHS
    tokens = (tile // 16) ** 2 + max_sequence_length
    forward = tiles_per_forward * tokens * hidden * width * TOKEN_WIDTHS
    widths = list({**_VAE, **flux_configs(model)["vae"]}["block_out_channels"])
    entering = widths[1] if len(widths) > 1 else widths[0]  # channels into the last up block
    decode = tile * tile * width * (2 * entering + 4 * widths[0])
    activations = int((forward + decode) * ACTIVATION_MARGIN)
    stages = {
        "encode": encoders + int(encode_activations * ACTIVATION_MARGIN),
        "place": held + (transformer.largest_block * width if quantize else 0),
        "sample": held + vae + activations,
    }
    return {
        "bytes": max(stages.values()) + CUDA_CONTEXT,
        "stages": stages,
        "weights": {"transformer": held, "vae": vae, "text_encoders": encoders},
        "activations": {"forward_group": forward, "vae_window": decode},
        "assumes": f"{'8-bit' if quantize else 'bf16'} transformer, {tiles_per_forward} "
        f"window(s) of {tile} px per forward, the VAE one window at a time",
    }


def rrdbnet_parameters(num_feat: int = 64, num_block: int = 23, num_grow: int = 32) -> int:
    """RRDBNet (Real-ESRGAN x4plus layout): conv_first, body of RRDBs (3 dense blocks of 5
    convs each), conv_body, two upsampling convs, conv_hr, conv_last."""
    dense = sum(
        9 * (num_feat + k * num_grow) * (num_grow if k < 4 else num_feat)
        + (num_grow if k < 4 else num_feat)
        for k in range(5)
    )
    convs = 9 * 3 * num_feat + num_feat + 4 * (9 * num_feat * num_feat + num_feat)
    return convs + 9 * num_feat * 3 + 3 + num_block * 3 * dense


def sr_job_memory(
    *, tile: int, pad: int, scale: int, tiles_per_forward: int, width: int, num_block: int = 23
) -> dict:
    """Device bytes of an SR tile job (an x4plus-shaped RRDBNet: 64 features, growth 32),
    `tiles_per_forward` padded tiles per forward at `width` bytes per value."""
    weights = rrdbnet_parameters(num_block=num_block) * width
    padded = (tile + 2 * pad) ** 2
    body = padded * (64 + 4 * 32) * width * 2  # a dense block's concatenation, in and out
    upsampled = padded * scale * scale * 64 * width * 3  # conv_up2, conv_hr and activations
    activations = int(tiles_per_forward * (body + upsampled) * ACTIVATION_MARGIN)
    return {
        "bytes": weights + activations + CUDA_CONTEXT,
        "weights": weights,
        "activations": activations,
        "assumes": f"{tiles_per_forward} tile(s) of {tile}+2x{pad} px per forward, x{scale}",
    }


def gib(count: float) -> float:
    return round(count / GIB, 2)


def fitting_devices(need: int, devices: Mapping[str, int]) -> list[str]:
    """Ids of the devices (id -> bytes) with at least `need` bytes, smallest first (a job
    that fits a small card leaves the large ones to jobs that need them)."""
    return sorted((i for i, size in devices.items() if size >= need), key=lambda i: devices[i])


@dataclass(frozen=True)
class GpuSettings:
    """The validated `gpu` section: where jobs lock devices and each device's memory.
    Scheduling only (jobs read it from the config, never from params)."""

    SECTION: ClassVar[str] = "gpu"

    lock_dir: str
    devices: tuple[dict, ...]  # {id, memory_gib} each

    @classmethod
    def from_config(cls, gpu: Mapping) -> GpuSettings:
        """From the schema-filled `gpu` section (a missing key is a KeyError: validate)."""
        return cls(lock_dir=gpu["lock_dir"], devices=tuple(dict(d) for d in gpu["devices"]))

    @property
    def memory(self) -> dict[str, int]:
        """`devices` as id -> bytes (what the device lease takes)."""
        return {str(d["id"]): int(d["memory_gib"] * GIB) for d in self.devices}


def declared_devices(gpu_config: Mapping) -> dict[str, int]:
    """`gpu.devices` of the validated config as id -> bytes."""
    return GpuSettings.from_config(gpu_config).memory


def describe_fit(need: int, devices: Mapping[str, int]) -> str:
    if not devices:
        return "device sizes not declared (gpu.devices)"
    fits = fitting_devices(need, devices)
    if not fits:
        return f"fits no declared device (largest {gib(max(devices.values()))} GiB)"
    return f"fits device(s) {', '.join(sorted(fits))}"


def refine_memory_or_reason(model: str | Path, **settings) -> dict:
    """`refine_job_memory`, or {"unknown": why} where the model's configs cannot be read
    (a folder not downloaded yet: the tile job's loader then says what is missing)."""
    try:
        return refine_job_memory(model, **settings)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        return {"unknown": f"{model}: cannot read the model's configs ({error})"}
