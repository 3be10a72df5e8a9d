"""Real-ESRGAN models behind the tiler: loading, tiled exactness, alpha, the reference tiler."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blkassist import canvas
from blkassist.compat import realesrganer_class, rrdbnet_class
from blkassist.errors import ModelFileError
from blkassist.sr.models import LanczosUpscaler, NeuralUpscaler, build_rrdbnet, rrdbnet_params
from blkassist.sr.rrdbnet import RRDBNet
from blkassist.sr.tiler import ProgressLog, forward_groups, upscale_batch
from blkassist.tiling import plan_mural
from tests.conftest import REPO, save_tiny_rrdbnet, textured

# Receptive radius of a one-block RRDBNet in input pixels: 17 convs at 1x, 1 at 2x, 3 at 4x.
TINY_RECEPTIVE_RADIUS = 19


def tiled_upscale(pixels, upscaler, tmp_path, *, scale=4, tile=32, pad=24, per_job=3):
    height, width, bands = pixels.shape
    plan = plan_mural(width, height, scale=scale, tile=tile, tiles_per_job=per_job).passes[0]
    source = canvas.create(tmp_path / "in.zarr", width, height, bands, tile)
    source[:] = pixels
    target = canvas.create(
        tmp_path / "out.zarr", plan.output_width, plan.output_height, bands, plan.output_chunk
    )
    for batch in range(plan.batch_count):
        upscale_batch(plan, batch, source, target, upscaler, pad, ProgressLog(tmp_path, batch))
    return np.asarray(target[:])


@pytest.mark.parametrize(
    "scale,num_feat,num_block,num_grow_ch",
    list(itertools.product([1, 2, 4], [4, 16], [1, 3], [2, 8])),
)
def test_our_rrdbnet_is_basicsrs_bit_for_bit(scale, num_feat, num_block, num_grow_ch):
    """The tile jobs' RRDBNet (torch only) against basicsr's, which Real-ESRGAN's weights
    are trained on: same state-dict names in the same order, same output to the bit, for
    every scale and shape, on an odd-sized batch."""
    torch.manual_seed(scale * 100 + num_feat + num_block + num_grow_ch)
    arch = dict(num_in_ch=3, num_out_ch=3, scale=scale, num_feat=num_feat,
                num_block=num_block, num_grow_ch=num_grow_ch)  # fmt: skip
    theirs = rrdbnet_class()(**arch).eval()
    with torch.no_grad():  # basicsr's init scales the trunk down: make every layer count
        for tensor in theirs.state_dict().values():
            tensor.normal_(0, 0.3)
    ours = RRDBNet(**arch).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    pixels = torch.rand(2, 3, 12, 20)
    with torch.no_grad():
        expected, got = theirs(pixels), ours(pixels)
    assert got.shape == (2, 3, 12 * scale, 20 * scale)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_official_layouts_load_strictly(tmp_path, key):
    model = rrdbnet_class()(
        num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=2, num_grow_ch=4
    )
    torch.save({key: model.state_dict()}, tmp_path / "w.pth")
    loaded = build_rrdbnet(rrdbnet_params(tmp_path / "w.pth"))
    assert loaded.native_scale == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_scale2_architecture_is_read_off_the_weights(tmp_path):
    path = save_tiny_rrdbnet(tmp_path / "x2.pth", scale=2)
    upscaler = NeuralUpscaler.from_file(path)
    assert upscaler.native_scale == 2
    assert upscaler(textured(8, 12)[None], 2).shape == (1, 16, 24, 3)


def test_missing_and_foreign_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing\.pth: model file not found"):
        rrdbnet_params(tmp_path / "nothing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(
        ModelFileError, match=r"junk\.pth: not a weights-only PyTorch or safetensors file"
    ):
        rrdbnet_params(tmp_path / "junk.pth")
    torch.save({"generator": {}}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match=r"other\.pth: no 'params_ema' or 'params'"):
        rrdbnet_params(tmp_path / "other.pth")


def test_tiled_equals_whole_image_when_pad_covers_receptive_field(tmp_path, tiny_weights):
    pixels = textured(75, 90)  # odd sizes: partial tiles on the right and bottom
    upscaler = NeuralUpscaler.from_file(tiny_weights)
    tiled = tiled_upscale(pixels, upscaler, tmp_path, tile=32, pad=TINY_RECEPTIVE_RADIUS + 5)
    whole = upscaler(pixels[None], 4)[0]
    assert tiled.shape == whole.shape == (300, 360, 3)
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    # Without context the seams show: the check above is not vacuous.
    seamy = tiled_upscale(pixels, upscaler, tmp_path / "nopad", tile=32, pad=0)
    assert np.abs(seamy.astype(int) - whole).max() > 3


def test_lanczos_tiles_are_exact(tmp_path):
    pixels = textured(50, 70)
    tiled = tiled_upscale(pixels, LanczosUpscaler(), tmp_path, scale=3, tile=16, pad=8)
    whole = LanczosUpscaler()(pixels[None], 3)[0]
    assert np.array_equal(tiled, whole)


@pytest.mark.parametrize("scale", [2, 3])
def test_lower_scales_resize_the_model_output(tmp_path, tiny_weights, scale):
    pixels = textured(40, 56)
    upscaler = NeuralUpscaler.from_file(tiny_weights)
    tiled = tiled_upscale(pixels, upscaler, tmp_path, scale=scale, tile=16, pad=28)
    assert tiled.shape == (40 * scale, 56 * scale, 3)
    native = upscaler(pixels[None], 4)[0]
    reference = (
        F.interpolate(
            torch.from_numpy(native).permute(2, 0, 1)[None].float(),
            size=(40 * scale, 56 * scale),
            mode="bicubic",
            antialias=True,
        )[0]
        .permute(1, 2, 0)
        .clamp(0, 255)
        .round()
        .numpy()
    )
    assert np.abs(tiled.astype(int) - reference).max() <= 1


def test_same_output_as_realesrganer_for_same_weights_and_tiling(tmp_path, tiny_weights):
    pixels = textured(70, 100)
    ours = tiled_upscale(
        pixels, NeuralUpscaler.from_file(tiny_weights), tmp_path, tile=32, pad=8, per_job=100
    )
    model = rrdbnet_class()(
        num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=1, num_grow_ch=4
    )
    reference_tiler = realesrganer_class()(
        scale=4,
        model_path=str(tiny_weights),
        model=model,
        tile=32,
        tile_pad=8,
        pre_pad=0,
        half=False,
        device=torch.device("cpu"),
    )
    theirs_bgr, _ = reference_tiler.enhance(pixels[..., ::-1].copy(), outscale=4)
    theirs = theirs_bgr[..., ::-1]
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs).max() <= 1


class BicubicX4(torch.nn.Module):
    """A stand-in 'model' whose ideal output is known: plain bicubic 4x."""

    native_scale = 4

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="bicubic")


def disc_on_transparent(size=48):
    yy, xx = np.mgrid[0:size, 0:size]
    inside = np.hypot(yy - size / 2, xx - size / 2) < size / 3
    rgba = np.zeros((size, size, 4), np.uint8)  # hidden colour under alpha 0 is black
    rgba[inside] = (230, 40, 30, 255)
    return rgba


@pytest.mark.parametrize("upscaler", [NeuralUpscaler(BicubicX4()), LanczosUpscaler()])
def test_alpha_edges_have_no_dark_halo(upscaler):
    out = upscaler(disc_on_transparent()[None], 4)[0].astype(int)
    alpha = out[..., 3]
    edge = (alpha > 12) & (alpha < 243)
    assert edge.sum() > 100
    # Un-premultiplied colour on the soft edge stays the disc's red, not darkened to black.
    assert out[edge, 0].mean() > 200
    # (8-bit premultiplied colour is coarse at very low alpha: check where alpha > 40.)
    visible = edge & (alpha > 40)
    assert np.abs(out[visible, :3] - (230, 40, 30)).max() < 40


def test_straight_alpha_would_have_shown_a_halo():
    """The same edge without premultiplication darkens: the halo the fix avoids."""
    rgba = disc_on_transparent()
    rgb = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)[None].float()
    naive = F.interpolate(rgb, scale_factor=4, mode="bicubic")[0].permute(1, 2, 0).numpy()
    alpha = F.interpolate(
        torch.from_numpy(rgba[..., 3]).float()[None, None], scale_factor=4, mode="bicubic"
    )[0, 0].numpy()
    edge = (alpha > 12) & (alpha < 243)
    assert naive[edge, 0].mean() < 180


def test_rgba_tiles_through_a_neural_model(tmp_path, tiny_weights):
    pixels = disc_on_transparent(40)
    tiled = tiled_upscale(
        pixels,
        NeuralUpscaler.from_file(tiny_weights),
        tmp_path,
        tile=16,
        pad=TINY_RECEPTIVE_RADIUS + 5,
    )
    assert tiled.shape == (160, 160, 4)
    assert tiled[..., 3].max() == 255 and tiled[0, 0, 3] == 0
    assert (tiled[..., :3][tiled[..., 3] == 0] == 0).all()  # no colour where nothing shows


def test_four_tiles_per_forward_equal_one_and_batching_changes_no_bit(tmp_path, tiny_weights):
    """The batched forward that GPUs use gives the tiles of one-at-a-time (up to the last
    bit: float kernels differ with batch size), and re-batching the jobs changes no bit."""
    pixels = textured(96, 192)  # 6x3 tiles of 32: the middle row has 4 equal padded windows
    upscaler = NeuralUpscaler.from_file(tiny_weights)
    height, width, bands = pixels.shape
    source = canvas.create(tmp_path / "in.zarr", width, height, bands, 32)
    source[:] = pixels
    results = {}
    for per_forward, per_job in [(1, 18), (4, 18), (4, 5), (4, 1)]:
        plan = plan_mural(width, height, scale=4, tile=32, tiles_per_job=per_job).passes[0]
        name = f"{per_forward}-{per_job}"
        target = canvas.create(
            tmp_path / f"{name}.zarr", plan.output_width, plan.output_height, bands,
            plan.output_chunk,
        )  # fmt: skip
        for batch in range(plan.batch_count):
            progress = ProgressLog(tmp_path / f"progress-{name}", batch)
            upscale_batch(plan, batch, source, target, upscaler, 8, progress, per_forward)
        results[(per_forward, per_job)] = np.asarray(target[:]).astype(int)
    groups = forward_groups(plan.tiles_between(0, plan.tile_count), plan, 8, 4)
    assert max(len(group) for group in groups) == 4  # a real batch of 4 ran
    one, four = results[(1, 18)], results[(4, 18)]
    assert np.abs(one - four).max() <= 1
    assert (one != four).mean() < 1e-3
    assert np.array_equal(four, results[(4, 5)])
    assert np.array_equal(four, results[(4, 1)])


def test_safetensors_weights_load_like_the_pth(tmp_path, tiny_weights):
    from safetensors.torch import save_file

    params = rrdbnet_params(tiny_weights)
    save_file({k: v.contiguous() for k, v in params.items()}, tmp_path / "tiny.safetensors")
    loaded = rrdbnet_params(tmp_path / "tiny.safetensors")
    assert loaded.keys() == params.keys()
    assert all(torch.equal(loaded[k], params[k]) for k in params)
    assert build_rrdbnet(loaded).native_scale == 4


@pytest.mark.parametrize("scale", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("bands", [3, 4])
def test_lanczos_regions_equal_cropping_the_whole_window(scale, bands):
    """The tiler asks only for each tile's own output: for every scale, band count and a
    matrix of boxes (inner, touching each edge, tiny), that is the crop of the whole."""
    rng = np.random.default_rng(scale * 10 + bands)
    windows = rng.integers(0, 256, (1, 42, 38, bands), np.uint8)
    if bands == 4:
        windows[..., 3] = rng.choice([0, 90, 255], windows.shape[:3])
    upscaler = LanczosUpscaler()
    whole = upscaler(windows, scale)[0]
    height, width = windows.shape[1:3]
    edges = [(0, 5), (3, 30), (8, 38), (36, 38), (0, 38)]
    for left, right in edges:
        for top, bottom in [(0, 42), (8, 10), (40, 42), (5, 33)]:
            if right > width or bottom > height:
                continue
            box = (left * scale, top * scale, right * scale, bottom * scale)
            (region,) = upscaler.regions(windows, scale, [box])
            assert np.array_equal(region, whole[box[1] : box[3], box[0] : box[2]]), box


def test_a_torn_last_progress_line_is_not_a_finished_tile(tmp_path):
    """`130\\n13` (a crash mid-write) must not mark tile 13 finished: the tile is redone,
    and the next record starts on a clean line."""
    pixels = textured(64, 96)
    plan = plan_mural(96, 64, scale=2, tile=32, tiles_per_job=6).passes[0]
    source = canvas.create(tmp_path / "in.zarr", 96, 64, 3, 32)
    source[:] = pixels
    target = canvas.create(tmp_path / "out.zarr", 192, 128, 3, plan.output_chunk)
    progress = ProgressLog(tmp_path / "progress", 0)
    upscale_batch(plan, 0, source, target, LanczosUpscaler(), 8, progress)
    reference = np.asarray(target[:])
    tile = plan.tiles_between(0, plan.tile_count)[1]
    box = (
        slice(tile.y * 2, (tile.y + tile.height) * 2),
        slice(tile.x * 2, (tile.x + tile.width) * 2),
    )
    target[box] = 0  # its pixels were never written...
    progress.path.write_text("0\n1")  # ...but the crash left "1" without its newline
    assert progress.finished() == {0}
    report = upscale_batch(plan, 0, source, target, LanczosUpscaler(), 8, progress)
    assert report.skipped == 1 and np.array_equal(np.asarray(target[:]), reference)
    assert progress.path.read_text().split("\n")[:2] == ["0", "1"]
    assert progress.finished() == set(range(plan.tile_count))


def test_a_neural_tile_job_imports_neither_basicsr_nor_torchvision(tiny_weights):
    """Importing basicsr (and with it torchvision) cost every tile job ~3.5 s of CPU, as much
    as a small mural's whole upscale; the tile job's own loading path must not need them."""
    probe = (
        "import sys\n"
        "import numpy as np\n"
        "import blkassist.sr.passes  # what scripts/upscale_tile_batch.py imports\n"
        "from blkassist.sr.models import NeuralUpscaler  # what its neural jobs load\n"
        f"upscaler = NeuralUpscaler.from_file({str(tiny_weights)!r})\n"
        "assert upscaler(np.zeros((1, 8, 8, 3), np.uint8), 4).shape == (1, 32, 32, 3)\n"
        "print(' '.join(m for m in ('basicsr', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", f"a tile job imports {result.stdout.strip()}"
