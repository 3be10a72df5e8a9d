"""The mural preflight's model check reads a weights file's header, without torch or a model:
it must give the full loader's verdict (same architecture, same errors) on every layout."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from blkassist.compat import rrdbnet_class
from blkassist.errors import ModelFileError
from blkassist.plan import check_model
from blkassist.sr.models import build_rrdbnet, rrdbnet_params
from blkassist.sr.weights import describe_rrdbnet, header_shapes, rrdbnet_layout
from blkassist.tiling import plan_mural
from tests.conftest import REPO


def tiny(scale=4, num_feat=8, num_block=2, num_grow_ch=4, num_out_ch=3, seed=0):
    torch.manual_seed(seed)
    return rrdbnet_class()(
        num_in_ch=3, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat,
        num_block=num_block, num_grow_ch=num_grow_ch,
    )  # fmt: skip


def full_loader(path) -> dict:
    """What a job would find: the weights loaded into a built RRDBNet."""
    model = build_rrdbnet(rrdbnet_params(path), path)
    return {
        "architecture": "RRDBNet",
        "native_scale": model.native_scale,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


ARCHS = [
    dict(scale=s, num_feat=f, num_block=b, num_grow_ch=g, num_out_ch=o)
    for s, (f, b, g), o in itertools.product((1, 2, 4), ((8, 1, 4), (12, 3, 6)), (3, 1))
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: "-".join(map(str, a.values())))
def test_the_layout_is_basicsr_rrdbnets_own(arch):
    built = {k: tuple(v.shape) for k, v in tiny(**arch).state_dict().items()}
    assert rrdbnet_layout({"num_in_ch": 3, **arch}) == built


def save(kind: str, model, path):
    """One file layout a user may hold."""
    state = model.state_dict()
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif kind == "legacy":  # torch's pre-1.6 format: not a zip
        torch.save({"params_ema": state}, path, _use_new_zipfile_serialization=False)
    elif kind == "parameters":  # nn.Parameter objects, not tensors
        torch.save({"params": dict(model.named_parameters())}, path)
    elif kind == "half":
        torch.save({"params_ema": {k: v.half() for k, v in state.items()}}, path)
    elif kind == "flat":
        torch.save(state, path)
    else:  # the official layout: both generators, a module state dict with _metadata
        torch.save({"params": state, kind: state}, path)
    return path


LAYOUTS = ["params_ema", "parameters", "half", "flat", "safetensors", "legacy"]


@pytest.mark.parametrize(("layout", "scale"), list(itertools.product(LAYOUTS, (4, 2, 1))))
def test_the_header_gives_the_full_loaders_answer(tmp_path, layout, scale):
    suffix = ".safetensors" if layout == "safetensors" else ".pth"
    path = save(layout, tiny(scale=scale), tmp_path / f"w{suffix}")
    shapes = header_shapes(path)
    if layout == "legacy":
        assert shapes is None  # only torch reads it: the full loader runs
    else:
        assert shapes == {k: tuple(v.shape) for k, v in rrdbnet_params(path).items()}
    assert describe_rrdbnet(path) == full_loader(path)
    assert describe_rrdbnet(path)["native_scale"] == scale


def test_the_check_imports_no_torch_and_reads_no_tensor(tmp_path):
    path = save("params_ema", tiny(), tmp_path / "w.pth")
    probe = (
        "import sys\n"
        "from blkassist.plan import check_model\n"
        "from blkassist.tiling import plan_mural\n"
        f"print(check_model({str(path)!r}, plan_mural(64, 64, scale=4, tile=32).passes))\n"
        "print('torch' in sys.modules, 'basicsr' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(full_loader(path)), "False False"]


class Payload:
    """Unpickling this would run code (make a folder)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def damaged(path, where: str):
    data = bytearray(path.read_bytes())
    if where == "truncated":
        del data[len(data) // 2 :]
    else:  # one byte of the first tensor's record flipped: its CRC no longer matches
        with zipfile.ZipFile(path) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
        at = info.header_offset  # the local header: its name and extra lengths, then the data
        start = at + 30 + int.from_bytes(data[at + 26 : at + 28], "little")
        data[start + int.from_bytes(data[at + 28 : at + 30], "little")] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def bad_files(tmp_path):
    """Every way a weights file can be wrong, each with what its message must say."""
    good = tiny().state_dict()
    cases = {}

    def case(name, expected, writer):
        path = tmp_path / name
        writer(path)
        cases[name] = (path, expected)

    cases["nowhere.pth"] = (tmp_path / "nowhere.pth", "model file not found")
    case(
        "notes.pth",
        "not a weights-only PyTorch or safetensors file",
        lambda p: p.write_text("not weights\n"),
    )
    case(
        "code.pth",
        "not a weights-only PyTorch or safetensors file",
        lambda p: torch.save({"params_ema": Payload(tmp_path / "pwned")}, p),
    )
    case("other.pth", "no 'params_ema' or 'params'", lambda p: torch.save({"generator": good}, p))
    case(
        "foreign.pth",
        "not an RRDBNet generator (missing 'conv_first.weight')",
        lambda p: torch.save({"params_ema": {"weight": torch.zeros(3)}}, p),
    )
    case(
        "extra.pth",
        "weights do not fit RRDBNet",
        lambda p: torch.save({"params_ema": {**good, "conv_extra.weight": torch.zeros(1)}}, p),
    )
    case(
        "missing.pth",
        "weights do not fit RRDBNet",
        lambda p: torch.save(
            {"params_ema": {k: v for k, v in good.items() if k != "conv_hr.bias"}}, p
        ),
    )
    narrow = torch.zeros(8, 4, 3, 3)
    case(
        "narrow.pth",
        "weights do not fit RRDBNet",
        lambda p: torch.save({"params_ema": {**good, "conv_hr.weight": narrow}}, p),
    )
    case(
        "truncated.pth",
        "not a weights-only PyTorch or safetensors file",
        lambda p: damaged(save("params_ema", tiny(), p), "truncated"),
    )
    case(
        "cut.safetensors",
        "not a weights-only PyTorch or safetensors file",
        lambda p: damaged(save("safetensors", tiny(), p), "truncated"),
    )
    case(
        "names.safetensors",
        "no 'params_ema' or 'params'",
        lambda p: save_file({f"params_ema.{k}": v for k, v in good.items()}, p),
    )
    return cases


def test_every_bad_file_gets_the_full_loaders_error(tmp_path):
    passes = plan_mural(64, 64, scale=4, tile=32).passes
    for name, (path, expected) in bad_files(tmp_path).items():
        with pytest.raises(ModelFileError) as quick:
            check_model(path, passes)
        with pytest.raises(ModelFileError) as full:
            full_loader(path)
        assert str(quick.value).startswith(f"{path}: {expected}"), name
        assert str(full.value).startswith(f"{path}: {expected}"), name
        if "do not fit" not in expected:  # torch words the strict load's complaint its own way
            assert str(quick.value) == str(full.value), name
    assert not (tmp_path / "pwned").exists()  # the payload never ran


def test_a_mismatch_names_each_key(tmp_path):
    good = tiny().state_dict()
    del good["conv_hr.bias"]
    good["conv_body.weight"] = torch.zeros(8, 4, 3, 3)
    good["conv_extra.weight"] = torch.zeros(1)
    torch.save({"params_ema": good}, tmp_path / "w.pth")
    with pytest.raises(ModelFileError) as error:
        describe_rrdbnet(tmp_path / "w.pth")
    assert str(error.value).endswith(
        "missing key(s) conv_hr.bias; unexpected key(s) conv_extra.weight; size mismatch for "
        "conv_body.weight: [8, 4, 3, 3] in the file, [8, 8, 3, 3] in the model"
    )


def test_a_damaged_tensor_record_is_refused_though_torch_would_load_it(tmp_path):
    path = damaged(save("params_ema", tiny(), tmp_path / "w.pth"), "crc")
    assert full_loader(path)["parameters"] > 0  # torch.load does not check the CRC
    with pytest.raises(ModelFileError, match=r"w\.pth: damaged: its record .*/data/0 fails"):
        describe_rrdbnet(path)
