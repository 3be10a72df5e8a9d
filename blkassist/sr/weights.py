"""What a Real-ESRGAN weights file holds, read without torch and without building a model.

A mural's preflight only needs the generator's tensor names and shapes: they give the
architecture (RRDBNet's scale, features, blocks) and tell whether the weights fit it.
Both file kinds say so in a header: a .safetensors file in its JSON header, a PyTorch zip
checkpoint in its `data.pkl`, whose pickle names each tensor's storage, offset, size and
stride; the tensor bytes live in separate zip records that are CRC-checked here (torch's
loader does not), never decoded. That pickle is read by an unpickler that knows only the
few globals a tensor state dict uses and builds none of them; anything else (a legacy
checkpoint, a pickle that needs code) goes to the full weights-only loader in
`blkassist.sr.models`, which has the last word on such files, so the verdict does not
depend on which path read it.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, NamedTuple

from blkassist.errors import ModelFileError

# x2 and x1 models fold each 2x2 or 4x4 block of input pixels into channels (pixel
# unshuffle) and upsample 4x inside: the factor by model scale, and the scale by the
# first convolution's input channels (RGB).
UNSHUFFLE = {4: 1, 2: 2, 1: 4}
SCALE_BY_IN_CHANNELS = {3 * factor**2: scale for scale, factor in UNSHUFFLE.items()}
GENERATOR_KEYS = ("params_ema", "params")  # the official layout, EMA weights preferred

Shapes = Mapping[str, tuple[int, ...]]


def existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: model file not found. Put the Real-ESRGAN .pth there or fix "
            "murals.NAME.model in your config."
        )
    return path


def unreadable(path: Path, error: BaseException) -> ModelFileError:
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelFileError(
        f"{path}: not a weights-only PyTorch or safetensors file ({cause}). Files that "
        "need code to load are refused; re-export the state dict (torch.save of "
        "tensors only) or convert it to .safetensors."
    )


def generator(loaded, path: Path) -> Mapping:
    """The generator's state dict inside a loaded checkpoint (tensors or TensorRefs)."""
    for key in GENERATOR_KEYS:
        if isinstance(loaded, dict) and key in loaded:
            return loaded[key]
    if isinstance(loaded, dict) and "conv_first.weight" in loaded:
        return loaded
    raise ModelFileError(
        f"{path}: no 'params_ema' or 'params' generator weights inside; expected the "
        "official Real-ESRGAN layout."
    )


# ---------------------------------------------------------------- reading a header


class TensorRef(NamedTuple):
    """A tensor as a PyTorch checkpoint's pickle describes it; its bytes are not read."""

    shape: tuple[int, ...]


class _NeedsFullLoader(Exception):
    """The header reader cannot tell; torch's weights-only loader decides."""


class _Storage(NamedTuple):
    record: str
    numel: int
    itemsize: int


_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
    "ByteStorage": 1, "BoolStorage": 1,
}  # fmt: skip


def _rebuild_tensor(storage, offset, size, stride, *_):
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if not isinstance(storage, _Storage) or (math.prod(size) and extent > storage.numel):
        raise _NeedsFullLoader(f"tensor outside its storage {storage}")
    return TensorRef(tuple(size))


def _rebuild_parameter(data, *_):
    return data


class _StateDict(dict):
    """An OrderedDict from the pickle; module state dicts carry a `_metadata` attribute."""


class _HeaderUnpickler(pickle.Unpickler):
    """Builds dicts and TensorRefs from a state dict's pickle and refuses every other
    global before anything is imported or called."""

    _GLOBALS: ClassVar = {
        ("collections", "OrderedDict"): _StateDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, data: bytes, records: Mapping[str, int]):
        super().__init__(io.BytesIO(data))
        self.records = records  # storage key -> record size in bytes

    def find_class(self, module, name):
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[module, name]
        if module == "torch" and name in _ITEMSIZE:
            return name
        raise _NeedsFullLoader(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _NeedsFullLoader(f"persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        storage = _Storage(str(key), int(numel), _ITEMSIZE.get(kind, 0))
        if self.records.get(storage.record) != storage.numel * storage.itemsize:
            raise _NeedsFullLoader(f"storage record {key} missing or of the wrong size")
        return storage


def _torch_zip_shapes(path: Path) -> Mapping:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise _NeedsFullLoader(str(error)) from None  # a legacy checkpoint, or not one
    with archive:
        pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pickles) != 1:
            raise _NeedsFullLoader("no single data.pkl")
        root = pickles[0].removesuffix("data.pkl")
        records = {
            info.filename.removeprefix(f"{root}data/"): info.file_size
            for info in archive.infolist()
            if info.filename.startswith(f"{root}data/")
        }
        if (bad := archive.testzip()) is not None:  # torch.load would not notice
            raise ModelFileError(
                f"{path}: damaged: its record {bad} fails its CRC check (a partial copy or a "
                "disk error). Copy or download the file again."
            )
        try:
            return _HeaderUnpickler(archive.read(pickles[0]), records).load()
        except _NeedsFullLoader:
            raise
        except Exception as error:
            raise _NeedsFullLoader(f"{type(error).__name__}: {error}") from None


def _safetensors_shapes(path: Path) -> Mapping:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as opened:
            names = opened.keys()  # the handle itself is not iterable
            return {key: TensorRef(tuple(opened.get_slice(key).get_shape())) for key in names}
    except Exception as error:
        raise unreadable(path, error) from None


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """The generator's tensor shapes from the file's header, or None where only the full
    loader can tell (a legacy or truncated checkpoint, a pickle that uses more than tensors).
    Raises ModelFileError for a missing file, a damaged safetensors file, or a checkpoint
    without generator weights, with the messages the full loader gives, and for a zip
    record that fails its CRC, which the full loader would take."""
    path = existing(path)
    try:
        if path.suffix == ".safetensors":
            loaded = _safetensors_shapes(path)
        else:
            loaded = _torch_zip_shapes(path)
    except _NeedsFullLoader:
        return None
    params = generator(loaded, path)
    if not all(isinstance(ref, TensorRef) for ref in params.values()):
        return None
    return {key: ref.shape for key, ref in params.items()}


# ---------------------------------------------------------------- the architecture


def rrdbnet_arch(shapes: Shapes, path="<state dict>") -> dict:
    """basicsr RRDBNet's constructor arguments, read off the generator's tensor shapes."""
    try:
        first = shapes["conv_first.weight"]
        blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"body\.(\d+)\.", k))}
        return {
            "num_in_ch": 3,
            "num_out_ch": shapes["conv_last.weight"][0],
            "scale": SCALE_BY_IN_CHANNELS[first[1]],
            "num_feat": first[0],
            "num_block": len(blocks),
            "num_grow_ch": shapes["body.0.rdb1.conv1.weight"][0],
        }
    except (KeyError, IndexError) as error:
        raise ModelFileError(f"{path}: not an RRDBNet generator (missing {error}).") from None


def rrdbnet_layout(arch: Mapping) -> dict[str, tuple[int, ...]]:
    """The state dict basicsr's RRDBNet(**arch) has: every name and shape (a test keeps it
    equal to basicsr's own for every scale and size)."""
    feat, grow = arch["num_feat"], arch["num_grow_ch"]
    in_ch = arch["num_in_ch"] * UNSHUFFLE[arch["scale"]] ** 2

    def conv(name, out_ch, in_ch):
        return {f"{name}.weight": (out_ch, in_ch, 3, 3), f"{name}.bias": (out_ch,)}

    layout = conv("conv_first", feat, in_ch)
    for block in range(arch["num_block"]):
        for rdb in (1, 2, 3):
            for i in range(1, 6):
                out_ch = feat if i == 5 else grow
                layout |= conv(f"body.{block}.rdb{rdb}.conv{i}", out_ch, feat + (i - 1) * grow)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layout |= conv(name, feat, feat)
    return layout | conv("conv_last", arch["num_out_ch"], feat)


def check_fits(shapes: Shapes, arch: Mapping, path) -> None:
    """What a strict load_state_dict would refuse, said before any model is built."""
    expected = rrdbnet_layout(arch)
    problems = []
    if missing := [k for k in expected if k not in shapes]:
        problems.append(f"missing key(s) {', '.join(missing)}")
    if unexpected := [k for k in shapes if k not in expected]:
        problems.append(f"unexpected key(s) {', '.join(unexpected)}")
    problems += [
        f"size mismatch for {k}: {list(shapes[k])} in the file, {list(shape)} in the model"
        for k, shape in expected.items()
        if k in shapes and tuple(shapes[k]) != shape
    ]
    if problems:
        fit = "; ".join(problems)
        raise ModelFileError(f"{path}: weights do not fit RRDBNet {dict(arch)}: {fit}")


def describe_rrdbnet(path: str | os.PathLike) -> dict:
    """Architecture, native scale and parameter count of a Real-ESRGAN weights file, with
    the full loader's errors. Reads the header alone where it suffices (no torch, no model:
    about 0.1 s for x4plus); otherwise loads the weights into an RRDBNet as a job would."""
    shapes = header_shapes(path)
    if shapes is None:
        from blkassist.sr.models import build_rrdbnet, rrdbnet_params

        model = build_rrdbnet(rrdbnet_params(path), path)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arch = rrdbnet_arch(shapes, path)
    check_fits(shapes, arch, path)
    return {
        "architecture": "RRDBNet",
        "native_scale": arch["scale"],
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
    }
