"""The diffusion path's library: plans, blend weights, colour anchoring, resume per window,
seam QA, sigmas, and the tiny Flux refiner, with deterministic stand-in refiners."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml
import zarr

from blkassist import canvas
from blkassist.fsutil import read_json
from blkassist.gpu_memory import GpuSettings
from blkassist.refine import seams
from blkassist.refine.anchor import anchor, anchor_on_device, anchor_torch, low_frequencies
from blkassist.refine.blend import blend_blocks
from blkassist.refine.jobs import allocate_stage, run_blend, stage_plan
from blkassist.refine.noise import CHUNK, FieldNoise, NoiseField, OwnNoise
from blkassist.refine.plan import (
    SIZE_MULTIPLE,
    RefinePass,
    axis_weights,
    grid_positions,
    pass_phase,
)
from blkassist.refine.settings import choose_path, plan_stages, refine_settings
from blkassist.refine.sigmas import (
    diffusers_start_sigma,
    pass_schedule,
    pass_sigmas,
    pass_times,
    start_sigma,
)
from blkassist.refine.windows import pass_noise, refine_windows
from blkassist.sr.passes import IncompletePassError
from blkassist.sr.tiler import ProgressLog
from tests.conftest import REPO, textured
from tests.flux_fixtures import refiner_options

PAPER_DENOISE = (0.12, 0.13, 0.15, 0.17, 0.20, 0.23, 0.25, 0.30, 0.37)  # A-C and coherence
FLUX_SCHEDULER = {
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


class IdentityRefiner:
    def refine(self, windows, noise, denoise):
        return windows.copy()

    def describe(self, denoise):
        return {"kind": "identity"}


class ShiftRefiner:
    """Adds a per-window colour offset (from the window's seed) and a little texture: what a
    drifting diffusion model does to flat colour."""

    def __init__(self, amplitude=30, fail_after=None):
        self.amplitude, self.fail_after, self.calls = amplitude, fail_after, 0

    def refine(self, windows, noise, denoise):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        out = []
        for window, source in zip(windows, noise, strict=True):
            rng = np.random.default_rng(source.key)
            offset = rng.uniform(-self.amplitude, self.amplitude, window.shape[2])
            grain = rng.normal(0, 3, window.shape)
            out.append(np.clip(window + offset + grain, 0, 255).round().astype(np.uint8))
        return np.stack(out)

    def describe(self, denoise):
        return {"kind": "shift"}


def geometry(width, height, tile, overlap, coherence=False, number=None):
    return {
        "step": 1,
        "number": number or (2 if coherence else 1),
        "coherence": coherence,
        "width": width,
        "height": height,
        "tile": tile,
        "overlap": overlap,
    }


def run_pass(tmp_path, base, geo, refiner, *, strength=1.0, tiles_per_job=3, blocks_per_job=2,
             noise=None, denoise=0.3, levels=4, previous=None):  # fmt: skip
    """One refinement pass in process, through the same functions as the workflow's jobs
    (`noise(plan)` may replace the pass's noise field; `previous`, the canvas it refines,
    defaults to `base`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, pixels in (("base", base), ("previous", base if previous is None else previous)):
        paths[name] = tmp_path / f"{name}.zarr"
        if not paths[name].exists():
            canvas.create(paths[name], pixels.shape[1], pixels.shape[0], pixels.shape[2],
                          64)[:] = pixels  # fmt: skip
    folder = tmp_path / "pass"
    allocate_stage(geo, str(paths["previous"]), str(paths["base"]), str(folder),
                   str(tmp_path / "pass.json"))  # fmt: skip
    record = read_json(tmp_path / "pass.json")
    plan = stage_plan(record, tiles_per_job, blocks_per_job)
    store = zarr.open_array(record["windows"], mode="r+")
    source = canvas.open_canvas(record["input_canvas"])
    anchor_to = canvas.open_canvas(record["base_canvas"])
    reports = [
        refine_windows(
            plan.batch_windows(batch), source, anchor_to, store, lambda: refiner,
            ProgressLog(record["progress"], plan.batch_range(batch)[0]), denoise=denoise,
            noise=(noise or (lambda p: pass_noise(1, "m", p)))(plan),
            anchor_strength=strength, anchor_levels=levels,
        )
        for batch in range(plan.batch_count)
    ]  # fmt: skip
    target = canvas.open_canvas(record["canvas"], mode="r+")
    for blend in range(plan.blend_count):
        blend_blocks(plan, plan.blend_blocks(blend), store, target)
    return plan, np.asarray(target[:]), reports


# -- plans --------------------------------------------------------------------------------
GEOMETRIES = list(itertools.product([64, 100, 257, 1000, 4099], [64, 96, 256], [8, 24, 32]))


@pytest.mark.parametrize(("length", "tile", "overlap"), GEOMETRIES)
@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_windows_lie_on_the_latent_grid_and_cover_the_canvas(length, tile, overlap, number):
    plan = RefinePass(1, number, False, length, 48, tile, overlap, 4, 4)
    size = plan.window_width
    assert all(x % SIZE_MULTIPLE == 0 for x in plan.xs)
    assert plan.xs[0] == 0 and length <= plan.xs[-1] + size < length + SIZE_MULTIPLE
    assert all(size - (b - a) >= overlap for a, b in itertools.pairwise(plan.xs))
    assert all(b > a for a, b in itertools.pairwise(plan.xs))
    # Blend weights never leave a pixel uncovered.
    total = np.zeros(plan.xs[-1] + size)
    for column, x in enumerate(plan.xs):
        total[x : x + size] += plan_weights(plan, column)
    assert total[:length].min() > 0


def plan_weights(plan, column):
    return np.asarray(axis_weights(plan.xs, plan.window_width, column, plan.overlap))


@pytest.mark.parametrize(("length", "tile", "overlap"), GEOMETRIES)
def test_no_two_passes_on_a_canvas_blend_on_the_same_line(length, tile, overlap):
    """Each pass's lattice is offset (0, 1/2, 1/4, 3/4, 1/8 of its step; the coherence pass
    takes the next), so their seams never coincide."""
    passes = [RefinePass(1, n, n == 5, length, 48, tile, overlap, 4, 4) for n in range(1, 6)]
    assert passes[-1].earlier() == [RefinePass(1, n, False, length, 48, tile, overlap, 4, 4)
                                    for n in range(1, 5)]  # fmt: skip
    step = (tile - overlap) // SIZE_MULTIPLE * SIZE_MULTIPLE
    if step // SIZE_MULTIPLE < len(passes) or length < tile + 2 * step:
        return  # too small a canvas or step for five distinct 16-px offsets
    for a, b in itertools.combinations(passes, 2):
        assert not set(a.seams_x) & set(b.seams_x), (a.name, b.name)
    if tile == 256 and length >= 1000:  # room for four lattices: seams at least a band apart
        for a, b in itertools.combinations(passes[:4], 2):
            inner_a, inner_b = a.seams_x[1:-1], b.seams_x[1:-1]  # between lattice windows
            assert min(abs(u - v) for u in inner_a for v in inner_b) >= overlap


def test_grid_positions_at_production_size():
    """64000 px, 1024-px windows, overlap 96: a 928-px step, 69-70 windows per row."""
    counts = [len(grid_positions(64000, 1024, 96, n)) for n in range(1, 5)]
    assert set(counts) <= {69, 70}  # the old evenly spread grid had 69
    assert grid_positions(64000, 1024, 96, 2)[1:3] == (464, 1392)
    assert [pass_phase(n) for n in range(1, 6)] == [0, 0.5, 0.25, 0.75, 0.125]


def test_blend_weights_are_a_band_centred_in_each_overlap():
    xs = (0, 48, 144)  # the first pair overlaps by 208 px, the second by 160
    first = np.asarray(axis_weights(xs, 256, 0, 32))
    second = np.asarray(axis_weights(xs, 256, 1, 32))
    # Window 0 falls to zero over 32 px around the middle of its 208-px overlap with 1.
    assert np.all(first[:136] == 1) and np.all(first[168:] == 0)
    centre = (48 + 256) // 2
    assert abs(first[centre] - 0.5) < 0.05
    # Complementary: in their overlap (outside window 1's own far ramp) they sum to one.
    np.testing.assert_allclose(first[48:208] + second[:160], 1.0, atol=1e-12)


def test_blend_jobs_read_only_tile_batches_that_exist_and_cover_their_blocks():
    plan = RefinePass(1, 1, False, 1500, 1100, 256, 32, 5, 3)
    for blend in range(plan.blend_count):
        batches = plan.blend_batches(blend)
        available = {w.index for b in batches for w in plan.batch_windows(b)}
        for block in plan.blend_blocks(blend):
            needed = {w.index for w in plan.covering(*plan.block_box(block))}
            assert needed <= available


# -- identity and shifted-colour refiners -------------------------------------------------
@pytest.mark.parametrize(
    ("size", "tile", "overlap", "coherence", "bands"),
    [
        ((150, 220), 64, 16, False, 3),
        ((150, 220), 64, 16, True, 3),
        ((97, 131), 48, 8, False, 4),
        ((97, 131), 48, 24, True, 4),
        ((40, 300), 64, 32, False, 3),  # canvas smaller than a tile on one axis
        ((600, 530), 128, 32, True, 3),  # more than one output block each way
    ],
)
def test_identity_refiner_reproduces_the_base_exactly(
    tmp_path, size, tile, overlap, coherence, bands
):
    base = textured(*size, bands=bands)
    geo = geometry(size[1], size[0], tile, overlap, coherence)
    _, out, _ = run_pass(tmp_path, base, geo, IdentityRefiner())
    assert np.array_equal(out, base)


@pytest.mark.parametrize("coherence", [False, True])
def test_shifted_colour_is_anchored_away_and_leaves_no_seam(tmp_path, coherence):
    base = textured(256, 320)
    geo = geometry(320, 256, 64, 16, coherence)
    plan, anchored, _ = run_pass(tmp_path / "a", base, geo, ShiftRefiner(), strength=1.0)
    _, drifting, _ = run_pass(tmp_path / "b", base, geo, ShiftRefiner(), strength=0.0)
    # Low frequencies equal the SR base: tone and colour cannot drift.
    low_out, low_base = low_frequencies(anchored, 4), low_frequencies(base, 4)
    assert np.abs(low_out - low_base).max() < 1.5
    assert np.abs(low_frequencies(drifting, 4) - low_base).max() > 10
    # The refinement's own texture (the high frequencies) is kept.
    assert np.abs(anchored.astype(int) - base).mean() > 1
    good = seams.measure(plan, anchored, base)
    bad = seams.measure(plan, drifting, base)
    assert good["worst_score"] < 3, good["worst_at"]
    assert bad["worst_score"] > 5, bad
    assert bad["worst_at"]["x"] in plan.seams_x or bad["worst_at"]["y"] in plan.seams_y
    grids = {segment.get("grid") for segment in good["segments"]}
    assert grids == ({"own", "earlier"} if coherence else {"own"})


def test_a_killed_tile_job_resumes_per_window_byte_identically(tmp_path):
    base = textured(160, 200)
    geo = geometry(200, 160, 64, 16)
    _, reference, _ = run_pass(tmp_path / "ref", base, geo, ShiftRefiner(), tiles_per_job=20)
    (tmp_path / "killed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_pass(tmp_path / "killed", base, geo, ShiftRefiner(fail_after=3), tiles_per_job=20)
    allocation = str(tmp_path / "killed" / "pass.json")
    record = read_json(allocation)
    plan = stage_plan(record, 20, 2)
    progress = ProgressLog(record["progress"], 0)
    # A blend never composes windows that were not refined, and says which and why.
    with pytest.raises(IncompletePassError,
                       match=r"windows 3-11: no tile job has refined them yet"):  # fmt: skip
        run_blend(allocation, (0, 1), tmp_path / "blend.done")
    marker = tmp_path / "killed" / "pass" / "tiles-0-19.done"
    marker.write_text("{}")  # a marker that vouches for windows the progress log lacks
    with pytest.raises(IncompletePassError, match=r"windows 3-11: tiles-0-19\.done says "
                       r"their job finished.*Delete .*tiles-0-19\.done and rerun"):  # fmt: skip
        run_blend(allocation, (0, 1), tmp_path / "blend.done")
    with open(progress.path, "a") as handle:
        handle.write("3")  # a crash while recording window 3
    with pytest.raises(IncompletePassError, match=r"windows 3: their progress line was torn"):
        run_blend(allocation, (0, 1), tmp_path / "blend.done")
    marker.unlink()
    assert progress.finished() == {0, 1, 2}
    store = zarr.open_array(record["windows"], mode="r+")
    source = canvas.open_canvas(record["input_canvas"])
    report = refine_windows(
        plan.batch_windows(0), source, source, store, ShiftRefiner, progress,
        denoise=0.3, noise=pass_noise(1, "m", plan), anchor_strength=1.0, anchor_levels=4,
    )  # fmt: skip
    assert report.skipped == 3 and set(report.timings) >= {"read", "refine", "anchor", "write"}
    target = canvas.open_canvas(record["canvas"], mode="r+")
    for blend in range(plan.blend_count):
        blend_blocks(plan, plan.blend_blocks(blend), store, target)
    assert np.array_equal(np.asarray(target[:]), reference)


@pytest.mark.parametrize("bands", [3, 4])
def test_denoise_zero_copies_the_input_without_loading_a_model(tmp_path, bands):
    """A pass at denoise 0 is the identity: no model is made, nothing is anchored, and the
    blended canvas equals its input byte for byte (also where it differs from the base)."""
    base = textured(150, 230, bands, seed=3)
    previous = textured(150, 230, bands, seed=4)

    class NeverMade:
        def refine(self, *args):
            raise AssertionError("denoise 0 must not refine")

    _, out, reports = run_pass(tmp_path, base, geometry(230, 150, 64, 16), NeverMade(),
                               denoise=0.0, previous=previous)  # fmt: skip
    assert np.array_equal(out, previous)
    assert all(r.timings["load"] == 0 and r.timings["refine"] == 0 for r in reports)
    schedule = pass_schedule(0.0, 20, FLUX_SCHEDULER)
    assert schedule["sigmas"] == [0.0] and schedule["model_evaluations"] == 0


def test_anchoring_on_the_device_equals_the_numpy_reference():
    """GPU tile jobs anchor a forward group at once in torch: bit-equal to the numpy
    wavelet fix (StableSR's), for window shapes down to 1 pixel and several level counts."""
    rng = np.random.default_rng(0)
    shapes = [
        (64, 64, 5, 1.0),
        (40, 300, 4, 0.8),
        (7, 9, 5, 1.0),
        (128, 96, 5, 0.5),
        (1, 5, 3, 1.0),
    ]
    for height, width, levels, strength in shapes:
        refined = rng.integers(0, 256, (3, height, width, 3), np.uint8)
        base = rng.integers(0, 256, (3, height, width, 3), np.uint8)
        pairs = zip(refined, base, strict=True)
        expected = np.stack([anchor(r, b, strength, levels) for r, b in pairs])
        assert np.array_equal(anchor_torch(refined, base, strength, levels, "cpu"), expected)
        assert np.array_equal(anchor_on_device(refined, base, strength, levels), expected)


# -- seam QA ------------------------------------------------------------------------------
def test_seam_heatmap_and_thumbnail(tmp_path):
    base = textured(300, 420)
    plan = RefinePass(1, 1, False, 420, 300, 96, 16, 4, 4)
    thumb, factor = seams.thumbnail(base, long_side=100)
    assert factor == 5 and thumb.shape == (60, 84, 3)
    assert abs(thumb.mean() - base.mean()) < 1
    image = seams.heatmap(thumb, factor, seams.measure(plan, base, base))
    assert image.size == (84, 60)


class GrainRefiner:
    """Paints grain taken from each window's starting noise (at pixel scale): with the
    pass's noise field two overlapping windows paint the same grain where they overlap."""

    def refine(self, windows, noise, denoise):
        grain = np.stack([source.latents(3, *windows.shape[1:3], 1) for source in noise])
        return np.clip(windows + 12 * grain.transpose(0, 2, 3, 1), 0, 255).round().astype(np.uint8)

    def describe(self, denoise):
        return {"kind": "grain"}


def own_noise(plan):
    return lambda window: OwnNoise(1000 + window.index)


def smooth(height, width):
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = 60 + 0.4 * xx + 0.2 * yy
    return np.clip(np.stack([ramp, ramp * 0.9, 255 - ramp], axis=-1), 0, 255).astype(np.uint8)


def test_seam_qa_sees_the_texture_dip_of_independent_noise(tmp_path):
    """Cross-fading two independent grains lowers texture at the seam (the level step
    cannot see it); the pass's shared noise field keeps it whole."""
    base = smooth(200, 296)
    geo = geometry(296, 200, 96, 32)
    plan, shared, _ = run_pass(tmp_path / "a", base, geo, GrainRefiner(), levels=5)
    _, independent, _ = run_pass(tmp_path / "b", base, geo, GrainRefiner(), levels=5,
                                 noise=own_noise)  # fmt: skip
    good, bad = seams.measure(plan, shared, base), seams.measure(plan, independent, base)
    assert good["texture_ratio"] > 0.97 and good["worst_texture"] > 0.9, good
    assert bad["texture_ratio"] < 0.82, bad  # about 0.75 in the middle of the ramp
    assert bad["worst_score"] < 3  # the level step alone would not notice
    worst = bad["worst_texture_at"]
    assert worst["x"] in plan.seams_x or worst["y"] in plan.seams_y


def test_the_noise_field_is_canvas_wide_chunked_and_uses_every_seed_bit(monkeypatch):
    field = NoiseField(2**62 + 5)
    # Two overlapping windows (origins on the 16-px grid) get the same noise where they
    # overlap, and the same as the field's chunks there.
    a = FieldNoise(field, 0, 0).latents(16, 40, 40, 8)  # window (0, 0), 320 px
    b = FieldNoise(field, 16 * 13, 16 * 5).latents(16, 40, 40, 8)
    np.testing.assert_array_equal(a[:, 10:, 26:], b[:, :30, :14])
    np.testing.assert_array_equal(a[:, :, :CHUNK][:, :40], field.chunk(16, 0, 0)[:, :40, :40])
    assert abs(float(a.std()) - 1) < 0.02 and abs(float(a.mean())) < 0.02
    # Every bit of the 63-bit seed counts (a torch CPU generator would drop the high ones).
    assert not np.array_equal(NoiseField(5).chunk(4, 0, 0), field.chunk(4, 0, 0))
    # Far out on a huge canvas a window draws only the chunks it touches.
    drawn = []
    chunk = NoiseField.chunk
    monkeypatch.setattr(NoiseField, "chunk", lambda self, *args: drawn.append(args)
                        or chunk(self, *args))  # fmt: skip
    FieldNoise(field, 8_000_000, 6_000_000).latents(16, 128, 128, 8)  # 1024 px at 64 Gpx
    assert len(drawn) <= 9
    with pytest.raises(ValueError, match="not on the 8-pixel latent grid"):
        FieldNoise(field, 12, 0).latents(16, 8, 8, 8)


def test_real_flux_texture_is_continuous_across_seams_with_the_shared_noise_field(
    tiny_flux, tmp_path
):
    """The tiny Flux paints texture that depends on its starting noise (two seeds give
    unrelated texture): with the pass's noise field the texture at the seams is as strong
    as inside windows, with each window's own noise it dips; the second pass, on its own
    grid offset, keeps the first pass's seams whole too."""
    from blkassist.refine.refiner import FluxRefiner

    refiner = FluxRefiner(tiny_flux, **refiner_options(steps=3))
    base = smooth(256, 384)
    first = geometry(384, 256, 128, 32, number=1)
    plan, refined, _ = run_pass(tmp_path / "field", base, first, refiner, levels=5)
    _, independent, _ = run_pass(tmp_path / "own", base, first, refiner, levels=5,
                                 noise=own_noise)  # fmt: skip
    shared, own = seams.measure(plan, refined, base), seams.measure(plan, independent, base)
    assert shared["texture_ratio"] >= 0.9, shared
    assert own["texture_ratio"] < 0.9 and own["texture_ratio"] < shared["texture_ratio"] - 0.08
    second_plan, second, _ = run_pass(tmp_path / "second", base,
                                      geometry(384, 256, 128, 32, number=2), refiner,
                                      levels=5, previous=refined)  # fmt: skip
    measured = seams.measure(second_plan, second, base)
    grids = {segment["grid"] for segment in measured["segments"]}
    assert grids == {"own", "earlier"}  # its seams are not the first pass's
    assert measured["texture_ratio"] >= 0.9, measured


# -- sigmas -------------------------------------------------------------------------------
@pytest.mark.parametrize("denoise", [*PAPER_DENOISE, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 20, 28, 50])
def test_a_pass_runs_steps_evaluations_from_the_papers_start_sigma(denoise, steps):
    sigmas = pass_sigmas(denoise, steps, FLUX_SCHEDULER)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0  # `steps` model evaluations
    assert sigmas[0] == start_sigma(denoise, FLUX_SCHEDULER) >= denoise  # a shifted schedule
    times = pass_times(denoise, steps)
    np.testing.assert_allclose(np.diff(times), -denoise / steps)  # evenly spread, no repeats
    assert np.all(np.diff(sigmas) < -1e-3)
    # What diffusers' strength (= ComfyUI's denoise) starts from at 1024 px and 28 steps:
    # the same up to its 28-step grid (it rounds the start up to a schedule point).
    diffusers = diffusers_start_sigma(denoise, 28, 4096, FLUX_SCHEDULER)
    assert 0 <= diffusers - sigmas[0] <= 0.06


def test_the_papers_values_mean_the_same_noise_at_every_tile_size():
    """0.30 starts near sigma 0.58 wherever; diffusers' strength would start at 0.47 at
    512 px and 0.69 at 1280 px."""
    assert 0.55 < start_sigma(0.30, FLUX_SCHEDULER) < 0.60
    starts = [
        diffusers_start_sigma(0.3, 28, (px // 16) ** 2, FLUX_SCHEDULER) for px in (512, 1024, 1280)
    ]
    assert starts == sorted(starts) and starts[0] > 0.45 and starts[-1] > 0.65


# -- the tiny Flux refiner ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_flux():
    from blkassist.flux.loader import load_flux
    from tests.flux_fixtures import TINY_SPEC

    return load_flux(TINY_SPEC)


def test_flux_refiner_is_deterministic_per_window_noise(tiny_flux):
    from blkassist.refine.refiner import FluxRefiner

    refiner = FluxRefiner(tiny_flux, **refiner_options(steps=4))
    windows = np.stack([textured(40, 56, seed=1), textured(40, 56, seed=2)])  # not x16
    noise = [OwnNoise(5), OwnNoise(6)]
    first = refiner.refine(windows, noise, 0.3)
    assert first.shape == windows.shape and first.dtype == np.uint8
    assert np.array_equal(refiner.refine(windows, noise, 0.3), first)
    # A window's noise is its own: alone it comes out the same up to batched arithmetic.
    alone = refiner.refine(windows[:1], noise[:1], 0.3)[0]
    assert np.abs(alone.astype(int) - first[0]).max() <= 2
    other_seed = refiner.refine(windows[:1], [OwnNoise(7)], 0.3)[0]
    assert np.abs(other_seed.astype(int) - first[0]).max() > 10
    described = refiner.describe(0.3)
    assert described["start_sigma"] == round(start_sigma(0.3, tiny_flux.scheduler.config), 6)
    assert described["model_evaluations"] == 4 and len(described["sigmas"]) == 5
    assert described["lora"] is None
    rgba = textured(48, 48, bands=4, seed=3)[None]
    assert np.array_equal(refiner.refine(rgba, [OwnNoise(1)], 0.2)[0, ..., 3], rgba[0, ..., 3])


def test_flux_refiner_applies_the_lora_and_records_its_hash(tiny_flux, tmp_path):
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from blkassist.flux.loader import load_flux
    from blkassist.probe import sha256_file
    from blkassist.refine.refiner import FluxRefiner
    from tests.flux_fixtures import TINY_SPEC

    donor = load_flux(TINY_SPEC)
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    donor.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                   target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )  # fmt: skip
    FluxPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor.transformer)
    )
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    windows = textured(32, 32, seed=4)[None]
    noise = [OwnNoise(1)]
    plain = FluxRefiner(tiny_flux, **refiner_options(steps=4)).refine(windows, noise, 0.5)
    with_lora = FluxRefiner(load_flux(TINY_SPEC), **refiner_options(lora=lora, steps=4))
    assert with_lora.describe(0.5)["lora"]["sha256"] == sha256_file(lora)
    lora_result = with_lora.refine(windows, noise, 0.5)
    assert not np.array_equal(lora_result, plain)
    # 8-bit: the LoRA is fused into the weights first (diffusers cannot load it onto qint8).
    eight_bit = FluxRefiner(
        load_flux(TINY_SPEC), **refiner_options(lora=lora, steps=4, quantize=True)
    )
    described = eight_bit.describe(0.5)
    assert described["flux"]["quantized"] == "qint8"
    assert described["lora"]["fused_before_quantizing"]
    quantized = eight_bit.refine(windows, noise, 0.5).astype(int)
    assert np.abs(quantized - lora_result).mean() < np.abs(quantized - plain).mean()


# -- settings -----------------------------------------------------------------------------
def mural_config(**mural):
    from blkassist.config import validate_config

    config = {"murals": {"m": {"source": "a.png", **mural}}}
    return validate_config(config, REPO / "config" / "schema.yaml")


@pytest.mark.parametrize(
    ("configured", "long_side", "model", "expected"),
    [(p, side, model,
      p if p != "auto" else ("diffusion" if side > 8192 and model == "flux" else "sr"))
     for p in ("auto", "sr", "diffusion") for side in (4000, 8192, 8193, 64000)
     for model in ("flux", "resources/flux/tiny.yaml", "resources/flux/flux1-dev-random.yaml",
                   "resources/flux/ink")],
)  # fmt: skip
def test_path_choice_and_its_reason(configured, long_side, model, expected):
    path, reason = choose_path(configured, long_side, long_side * 3 // 4, model)
    assert path == expected
    assert str(long_side) in reason if configured == "auto" else configured in reason
    if configured == "auto" and long_side > 8192 and model != "flux":
        assert f"{model} is a demo model" in reason  # why auto did not refine


@pytest.mark.parametrize("declared", [True, False, None, "yes"])
def test_path_auto_follows_what_the_model_declares(tmp_path, declared):
    """Only `demo: true` in a model's spec or card keeps path auto on SR; how the model was
    made (a random spec, a trained folder) is never asked."""
    spec = yaml.safe_load((REPO / "resources/flux/tiny.yaml").read_text())
    card = {"format": "some-folder/1"}
    if declared is None:
        spec.pop("demo")
    else:
        spec["demo"] = card["demo"] = declared
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model_card.json").write_text(json.dumps(card))
    expected = "sr" if declared is True else "diffusion"
    for model in (tmp_path / "spec.yaml", tmp_path / "folder"):
        assert choose_path("auto", 16000, 12000, str(model))[0] == expected


def test_refine_settings_defaults_lora_names_and_passes():
    config = mural_config(refine={"lora": "texture:studio"})
    settings = refine_settings(config, "m", "work/models", "resources/flux/tiny.yaml")
    assert settings.lora == "work/models/texture-studio.safetensors"
    assert settings.passes == (0.30, 0.20, 0.15) and settings.coherence == 0.12
    assert (settings.tile, settings.overlap, settings.steps) == (1024, 96, 20)
    assert settings.model == "resources/flux/tiny.yaml" and config["murals"]["m"]["path"] == "auto"
    stages = plan_stages([(3000, 2000), (12000, 8000)], settings)
    assert [s.name for s in stages] == ["1.1", "1.2", "1.3", "2.1", "2.2", "2.3", "2.4"]
    assert [s.coherence for s in stages].count(True) == 1 and stages[-1].coherence
    none = refine_settings(mural_config(refine={"lora": "none", "coherence": None}), "m", "w", "x")
    assert none.lora is None and none.coherence is None
    assert len(plan_stages([(3000, 2000)], none)) == 3


@pytest.mark.parametrize(
    ("refine", "message"),
    [
        ({"tile": 64, "overlap": 40}, r"murals\.m\.refine\.overlap: 40 is more than half"),
        ({"lora": "texture"}, r"murals\.m\.refine\.lora: 'texture' is not valid"),
        ({"tile": 100}, r"murals\.m\.refine\.tile: 100 is not a multiple of 16"),
        ({"passes": []}, r"murals\.m\.refine\.passes: \[\] should be non-empty"),
        ({"passes": [{"denoise": 1.5}]}, r"murals\.m\.refine\.passes\.0\.denoise"),
        ({"denoise": 0.3}, r"'denoise' was unexpected"),
    ],
)
def test_bad_refine_settings_are_refused_naming_the_key(refine, message):
    from blkassist.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        refine_settings(mural_config(path="diffusion", refine=refine), "m", "w", "x")


@pytest.mark.parametrize(("tiles_per_job", "size"), [(4, 2), (6, 4), (5, 1), (8, 3)])
def test_forward_groups_are_aligned_on_the_pass(tiles_per_job, size):
    from blkassist.refine.windows import forward_groups

    plan = RefinePass(1, 1, False, 400, 300, 64, 16, tiles_per_job, 4)
    seen = []
    for batch in range(plan.batch_count):
        for group in forward_groups(plan.batch_windows(batch), size):
            assert len({w.index // size for w in group}) == 1 and len(group) <= size
            seen += [w.index for w in group]
    assert seen == list(range(plan.window_count))


# -- windows' cells, footprints and interiors ----------------------------------------------
@pytest.mark.parametrize(("length", "tile", "overlap"), GEOMETRIES)
def test_cells_tile_the_canvas_and_footprints_bound_each_windows_weight(length, tile, overlap):
    plan = RefinePass(1, 2, False, length, 70, tile, overlap, 4, 4)
    for window in plan.windows_between(0, plan.window_count):
        x0, y0, x1, y1 = plan.cell(window)
        assert plan.window_at(x0, y0) == window and plan.window_at(x1 - 1, y1 - 1) == window
        profile = np.asarray(axis_weights(plan.xs, plan.window_width, window.column, overlap))
        f0, _, f1, _ = plan.footprint(window)
        i0, _, i1, _ = plan.interior(window)
        inside = np.arange(window.x, window.x + window.width)
        kept = inside < length  # the overhang past the far border is never blended
        assert np.all(profile[kept & ((inside < f0) | (inside >= f1))] == 0)
        alone = profile[(inside >= i0) & (inside < i1)]
        assert np.all(alone == 1) if (i0, i1) != (x0, x1) else np.all(alone > 0)  # or its cell
        assert f0 <= x0 <= i0 < i1 <= x1 <= f1  # interior inside the cell inside the footprint
    covered = [w.index for w in plan.windows_in(0, 0, length, 70)]
    assert covered == list(range(plan.window_count))


# -- the QA gate -----------------------------------------------------------------------------
class PlantingRefiner:
    """Paints grain from each window's noise; with the pass's own noise (generation 0) it
    paints the window at `step_at` 45 grey levels too bright (a per-window colour shift) and a
    dark stroke across the window at `stroke_at`. Noise of a later generation paints neither."""

    def __init__(self, step_at=None, stroke_at=None):
        self.step_at, self.stroke_at, self.calls = step_at, stroke_at, []

    def refine(self, windows, noise, denoise, prompt=None):
        out = []
        for window, source in zip(windows, noise, strict=True):
            height, width = window.shape[:2]
            pixels = window + 6 * source.latents(3, height, width, 1).transpose(1, 2, 0)
            first = isinstance(source, FieldNoise)
            self.calls.append((source.x, source.y, first, denoise))
            if first and (source.x, source.y) == self.step_at:
                pixels = pixels + 45
            if first and (source.x, source.y) == self.stroke_at:
                pixels[height // 2 - 3 : height // 2 + 3, width // 5 : 4 * width // 5] = 15
            out.append(np.clip(pixels, 0, 255).round().astype(np.uint8))
        return np.stack(out)

    def describe(self, denoise):
        return {"kind": "planting"}


GATE = {"rounds": 2, "level": 3.0, "texture": 0.6, "fidelity": 0.04, "edge_margin": 24,
        "denoise_scale": 0.8, "context": 0}  # fmt: skip
GATED = geometry(320, 256, 64, 16)  # 7 x 5 windows of 64 px


def gate_pass(tmp_path, refiner, qa=GATE):
    from blkassist.refine import qa as gate
    from blkassist.refine.settings import QaSettings

    base = smooth(256, 320)
    plan, before, _ = run_pass(tmp_path, base, GATED, refiner, strength=0.0)
    record = read_json(tmp_path / "pass.json")
    measured = seams.measure(plan, before, base)
    refiner.calls.clear()
    final, record_qa = gate.run_rounds(
        plan, record, measured, lambda: refiner, QaSettings.from_config(qa),
        field=pass_noise(1, "m", plan)(plan.window(0)).field, denoise=0.3,
        anchor_strength=0.0, anchor_levels=4,
    )  # fmt: skip
    after = np.asarray(canvas.open_canvas(record["canvas"])[:])
    return plan, before, after, final, record_qa


PLANTED = [(8, 18), (0, 34), (6, 24), (30, 10), (17, 16)]  # corners, edges and inside


@pytest.mark.parametrize(("step", "stroke"), PLANTED)
def test_qa_gate_rerenders_exactly_the_window_with_a_step_and_the_one_with_a_stroke(
    tmp_path, step, stroke
):
    plan = RefinePass(**GATED, tiles_per_job=3, blocks_per_job=2)
    a, b = plan.window(step), plan.window(stroke)
    refiner = PlantingRefiner((a.x, a.y), (b.x, b.y))
    plan, before, after, final, record = gate_pass(tmp_path, refiner)
    (first,) = record["rounds"]  # one round fixes both; the second finds nothing
    reasons = {entry["window"]: entry["reasons"] for entry in first["windows"]}
    assert sorted(reasons) == sorted({step, stroke})
    assert any(r.startswith("level step") for r in reasons[step])
    assert any(r.startswith("new strokes") for r in reasons[stroke])
    assert sorted((x, y) for x, y, _, _ in refiner.calls) == sorted([(a.x, a.y), (b.x, b.y)])
    assert all(not first_noise and denoise == 0.24 for _, _, first_noise, denoise in refiner.calls)
    assert record["outcome"] == "clean" and not record["still_flagged"]
    for window in (step, stroke):
        score = first["after"][str(window)]
        assert score["level"] < 3 and score["texture"] > 0.6 and score["fidelity"] < 0.04
        assert record["regenerated"][str(window)]["round"] == 1
    # Only the two footprints changed; the seam report agrees with a fresh measurement.
    changed = np.any(after != before, axis=2)
    allowed = np.zeros_like(changed)
    for window in (a, b):
        x0, y0, x1, y1 = plan.footprint(window)
        allowed[y0:y1, x0:x1] = True
    assert changed.any() and not (changed & ~allowed).any()
    fresh = seams.measure(plan, after, smooth(256, 320))
    assert final["worst_score"] == pytest.approx(fresh["worst_score"], rel=0.02)
    assert final["worst_score"] < 3


def test_qa_gate_leaves_a_clean_pass_alone_and_a_rerun_puts_originals_back(tmp_path):
    from blkassist.refine.qa import QaStore

    clean = PlantingRefiner()
    _, before, after, _, record = gate_pass(tmp_path / "clean", clean)
    assert record["rounds"] == [] and clean.calls == [] and np.array_equal(before, after)
    assert record["outcome"] == "clean"
    plan = RefinePass(**GATED, tiles_per_job=3, blocks_per_job=2)
    a = plan.window(12)
    planted = PlantingRefiner((a.x, a.y))
    _, before, after, _, record = gate_pass(tmp_path / "planted", planted)
    assert [e["window"] for e in record["rounds"][0]["windows"]] == [12]
    # A rerun of the gate (a crash, changed settings) first puts the pass's own windows back.
    pass_record = read_json(tmp_path / "planted" / "pass.json")
    store = zarr.open_array(pass_record["windows"], mode="r+")
    target = canvas.open_canvas(pass_record["canvas"], mode="r+")
    assert QaStore(tmp_path / "planted" / "pass").restore(plan, store, target) == [12]
    assert np.array_equal(np.asarray(target[:]), before)
    assert QaStore(tmp_path / "planted" / "pass").saved() == []


def test_qa_gate_with_lower_denoise_and_more_context_samples_a_larger_box(tmp_path):
    plan = RefinePass(**GATED, tiles_per_job=3, blocks_per_job=2)
    a = plan.window(16)
    refiner = PlantingRefiner((a.x, a.y))
    qa = {**GATE, "context": 16, "denoise_scale": 0.5}
    *_, record = gate_pass(tmp_path, refiner, qa)
    (call,) = refiner.calls
    assert call[:2] == (a.x - 16, a.y - 16) and call[3] == 0.15
    assert record["rounds"][0]["windows"][0]["context"] == 16


def test_window_scores_blame_the_window_not_its_neighbours():
    from blkassist.refine.qa import window_scores

    plan = RefinePass(**GATED, tiles_per_job=3, blocks_per_job=2)
    bad = {4, 11}  # a window inside (11) and one at the top edge (4)
    segments = []
    for axis, seams_, other in (("x", plan.seams_x, plan.seams_y),
                                ("y", plan.seams_y, plan.seams_x)):  # fmt: skip
        cuts = [0, *other, plan.height if axis == "x" else plan.width]
        for k, line in enumerate(seams_):
            for lo, hi in itertools.pairwise(cuts):
                middle = (lo + hi) // 2
                if axis == "x":
                    row = plan.window_at(0, middle).row
                    sides = {row * plan.columns + k, row * plan.columns + k + 1}
                else:
                    column = plan.window_at(middle, 0).column
                    sides = {k * plan.columns + column, (k + 1) * plan.columns + column}
                score = 8.0 if sides & bad else 1.0
                segments.append({"axis": axis, "at": line, "from": lo, "to": hi,
                                 "grid": "own", "score": score, "texture": 1.0})  # fmt: skip
    scores = window_scores(plan, segments)
    assert {i for i, s in scores.items() if s["level"] > 3} == bad
    assert len(scores) == plan.window_count


# -- re-rolls ---------------------------------------------------------------------------------
def test_reroll_noise_draws_a_new_generation_only_in_the_windows_interior():
    from blkassist.refine.noise import RerollNoise, generation_seed

    plan = RefinePass(1, 1, False, 400, 300, 128, 32, 4, 4)
    window = plan.window(5)
    field = NoiseField(7)
    new = NoiseField(generation_seed(field.seed, "reroll", 1))
    assert new.seed != NoiseField(generation_seed(field.seed, "qa", 1)).seed
    interior = plan.interior(window)
    got = RerollNoise(field, new, window.x, window.y, interior).latents(4, 16, 16, 8)
    old = FieldNoise(field, window.x, window.y).latents(4, 16, 16, 8)
    fresh = FieldNoise(new, window.x, window.y).latents(4, 16, 16, 8)
    x0, y0, x1, y1 = ((v - o) / 8 for v, o in zip(interior, (window.x, window.y) * 2, strict=True))
    inside = np.zeros((16, 16), bool)
    inside[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)] = True
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got[:, inside], fresh[:, inside])
    np.testing.assert_array_equal(got[:, ~inside], old[:, ~inside])


def test_layered_canvas_reads_like_the_canvas_with_its_pieces_laid_over(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (150, 220, 3), np.uint8)
    canvas.create(tmp_path / "c.zarr", 220, 150, 3, 64)[:] = base
    expected = base.copy()
    overlays = []
    for k, (x0, y0, x1, y1) in enumerate([(0, 0, 64, 64), (64, 128, 128, 150), (200, 10, 220, 40)]):
        piece = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), np.uint8)
        canvas.save_piece(tmp_path / f"p{k}.zarr", piece)
        expected[y0:y1, x0:x1] = piece
        overlays.append({"box": [x0, y0, x1, y1], "path": str(tmp_path / f"p{k}.zarr")})
    view = canvas.open_view({"canvas": str(tmp_path / "c.zarr"), "overlays": overlays})
    assert view.shape == base.shape and view.chunks == (64, 64, 3)
    rows = [slice(None), slice(0, 70), slice(60, 150), slice(149, 150)]
    columns = [slice(None), slice(30, 210), slice(0, 1), slice(199, 300)]
    for ys, xs in itertools.product(rows, columns):
        np.testing.assert_array_equal(view[ys, xs], expected[ys, xs])
    np.testing.assert_array_equal(view[10:20], expected[10:20])
    np.testing.assert_array_equal(view[5:9, 60:70, :1], expected[5:9, 60:70, :1])
    assert canvas.open_view(str(tmp_path / "c.zarr")).shape == base.shape  # no overlays


def reroll_stages():
    """Two SR steps (x3 then x2) of a 200 x 150 source, two passes after the first step,
    one pass and a coherence pass after the second."""
    from blkassist.tiling import plan_mural

    sr = plan_mural(200, 150, scale=6, tile=64, tiles_per_job=4)
    stages = []
    for step, sr_pass in enumerate(sr.passes, start=1):
        for number in (1, 2):
            size = (sr_pass.output_width, sr_pass.output_height)
            coherence = step == 2 and number == 2
            stages.append(RefinePass(step, number, coherence, *size, 128, 32, 4, 2))
    return sr, stages


def plan_for(entries, final=(1200, 900)):
    from blkassist.refine.reroll import plan_rerolls, resolve_entries

    sr, stages = reroll_stages()
    resolved = resolve_entries([(f"reroll.{i}", e) for i, e in enumerate(entries)], stages, final)
    keyed = {s.name: {"denoise": 0.3, "seed": 1} for s in stages}
    return stages, plan_rerolls(resolved, stages, list(sr.passes), 16, keyed, {"model": "x"})


def entry(**fields):
    return {"pass": "last", "seed": 1, **fields}


def test_a_reroll_of_the_last_pass_costs_exactly_its_windows_and_their_blocks():
    stages, plan = plan_for([entry(windows=[3, 20])])
    last = stages[-1]
    assert set(plan.variants) == {s.name for s in stages}
    assert {n: sorted(v) for n, v in plan.variants.items() if v} == {last.name: [3, 20]}
    assert plan.tiles == {} or not any(plan.tiles.values())
    touched = {b for i in (3, 20) for b in last.block_ids(last.footprint(last.window(i)))}
    assert set(plan.blocks[last.name]) == touched
    cost = plan.cost()
    assert cost["windows"] == 2 and cost["passes"] == {last.name: {"chosen": 2, "propagated": 0}}
    # A second entry elsewhere leaves the first windows' keys alone (their pieces are kept).
    _, more = plan_for([entry(windows=[3, 20]), entry(windows=[30], seed=2)])
    assert more.variants[last.name][3].key == plan.variants[last.name][3].key
    assert more.variants[last.name][30].entry.generation == 2
    _, other = plan_for([entry(windows=[3, 20], denoise=0.2)])
    assert other.variants[last.name][3].key != plan.variants[last.name][3].key


def test_a_reroll_of_an_early_pass_reaches_only_what_reads_its_change():
    stages, plan = plan_for([entry(**{"pass": "1.1"}, windows=[4])])
    first = stages[0]
    region = first.footprint(first.window(4))
    # 1.2 samples again exactly the windows that read a changed pixel of 1.1.
    expected = {w.index for w in stages[1].covering(*region)}
    assert set(plan.variants["1.2"]) == expected and not plan.variants["1.2"][min(expected)].entry
    # The next SR step upscales again the tiles whose padded input meets 1.2's changes.
    changed = [stages[1].footprint(stages[1].window(i)) for i in expected]
    sr, _ = reroll_stages()
    step2 = sr.passes[1]
    tiles = {t.index for t in step2.tiles_between(0, step2.tile_count)
             if any(rr_meets(t.padded(16, step2.input_width, step2.input_height), box)
                    for box in changed)}  # fmt: skip
    assert set(plan.tiles[2]) == tiles and 0 < len(tiles) < step2.tile_count
    # ... and the last step's passes only what reads those tiles, not the whole canvas.
    assert 0 < len(plan.variants["2.1"]) < stages[2].window_count
    assert len(plan.variants["2.2"]) <= stages[3].window_count
    cost = plan.cost()
    assert cost["passes"]["1.1"] == {"chosen": 1, "propagated": 0}
    assert cost["sr_tiles"] == {2: len(tiles)}
    # The keys read what changed: a different entry upstream changes every key downstream.
    _, again = plan_for([entry(**{"pass": "1.1"}, windows=[4], seed=2)])
    assert all(again.variants["2.1"][i].key != v.key for i, v in plan.variants["2.1"].items())


def rr_meets(a, b):
    from blkassist.refine.reroll import meets

    return meets(a, b)


def test_a_reroll_box_names_the_windows_whose_cells_it_meets():
    stages, plan = plan_for(
        [entry(box=[0, 0, 10, 10]), entry(**{"pass": "1.1"}, box=[1190, 890, 1200, 900])]
    )
    assert {i for i, v in plan.variants[stages[-1].name].items() if v.entry} == {0}
    first = stages[0]
    assert first.window_count - 1 in plan.variants["1.1"]  # scaled to the 600 x 450 canvas
    assert plan.variants["1.1"][first.window_count - 1].entry.origin == "reroll.1"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry(**{"pass": "3.1"}, windows=[0])], r"reroll\.0\.pass: '3\.1' is not a refinement"),
        ([entry(windows=[999])], r"reroll\.0\.windows: \[999\] outside pass 2\.2's \d+ windows"),
        ([entry(windows=[1]), entry(windows=[1])], r"reroll\.1: window 1 of pass 2\.2 is re-rolled"
                                                   r" already by reroll\.0"),
        ([entry(box=[1300, 10, 1350, 20])], r"reroll\.0\.box: \[1300, 10, 1350, 20\] is not a"),
    ],
)  # fmt: skip
def test_bad_reroll_entries_are_refused_naming_the_entry(entries, message):
    from blkassist.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        plan_for(entries)


def test_reroll_files_as_the_viewer_saves_them_are_read_and_checked(tmp_path):
    import json

    from blkassist.config import load_schema
    from blkassist.errors import ConfigError
    from blkassist.refine.reroll import gather_entries

    schema = load_schema(REPO / "config" / "schema.yaml")
    saved = tmp_path / "m.reroll.json"
    saved.write_text(json.dumps({"mural": "m", "reroll": [{"pass": "2.2", "windows": [3, 4]}]}))
    raw = gather_entries("m", [{"windows": [1], "seed": 2, "pass": "last"}], str(saved), schema)
    assert raw == [
        ("murals.m.refine.reroll.0", {"windows": [1], "seed": 2, "pass": "last"}),
        (f"{saved}: reroll.0", {"pass": "2.2", "windows": [3, 4], "seed": 1}),
    ]
    saved.write_text(json.dumps({"reroll": [{"pass": "2.2", "window": [3]}]}))
    with pytest.raises(ConfigError, match=r"m\.reroll\.json: .*'window' was unexpected"):
        gather_entries("m", [], str(saved), schema)
    with pytest.raises(ConfigError, match=r"missing\.json does not exist: save it from"):
        gather_entries("m", [], str(tmp_path / "missing.json"), schema)


def test_rerolled_windows_change_only_their_footprints_and_leave_the_pass_alone(tmp_path):
    """The re-roll's jobs in process: two chosen windows sampled again from a new
    generation, their blocks blended again beside the pass; the canvas as the re-roll sees
    it differs from the pass's only inside the two footprints, and the pass's own store and
    canvas are untouched (dropping the overlays is the undo)."""
    from blkassist.refine.reroll import overlays, plan_rerolls, resolve_entries
    from blkassist.refine.reroll_jobs import run_reroll_blocks, sample_variants

    base = textured(256, 320)
    geo = geometry(320, 256, 64, 16, number=1)
    plan, before, _ = run_pass(tmp_path, base, geo, ShiftRefiner(amplitude=8), strength=0.5,
                               blocks_per_job=1)  # fmt: skip
    record = read_json(tmp_path / "pass.json")
    kept = {p: sha256_tree(record[p]) for p in ("windows", "canvas")}
    entries = resolve_entries([("reroll.0", entry(**{"pass": "1.1"}, windows=[9, 10], seed=3))],
                              [plan], (320, 256))  # fmt: skip
    rerolls = plan_rerolls(entries, [plan], [], 0, {"1.1": {}}, {})
    folder = str(tmp_path / "pass")
    members = [{"window": i, "key": v.key, "entry": v.entry.defining(), "reads": [],
                "path": f"{folder}/reroll/windows/{i}-{v.key}"}
               for i, v in rerolls.variants["1.1"].items()]  # fmt: skip
    refiner = ShiftRefiner(amplitude=8)
    settings = {"denoise": 0.3, "anchor_strength": 0.5, "anchor_levels": 4, "prompt": ""}
    source = canvas.open_canvas(record["input_canvas"])
    field = NoiseField(5)
    assert sample_variants(plan, members, source, source, lambda: refiner, field=field,
                           settings=settings) == [9, 10]  # fmt: skip
    assert sample_variants(plan, members, source, source, lambda: 1 / 0, field=field,
                           settings=settings) == []  # made already: no refiner  # fmt: skip
    made = read_json(members[0]["path"] + ".json")
    assert made["noise"]["kind"] == "reroll" and made["noise"]["generation"] == 3
    assert made["noise"]["field_seed"] != made["noise"]["pass_field_seed"] == field.seed
    blocks = [{"block": b, "key": blk.key, "path": f"{folder}/reroll/blocks/{b}-{blk.key}",
               "windows": [[i, f"{folder}/reroll/windows/{i}-{key}"] for i, key in blk.windows]}
              for b, blk in rerolls.blocks["1.1"].items()]  # fmt: skip
    run_reroll_blocks(str(tmp_path / "pass.json"), blocks, str(tmp_path / "blocks.done"))
    spec = {
        "canvas": str(tmp_path / "pass.json"),
        "overlays": overlays(folder, rerolls.blocks["1.1"]),
    }
    after = np.asarray(canvas.open_view(spec)[:])
    changed = np.any(after != before, axis=2)
    allowed = np.zeros_like(changed)
    for i in (9, 10):
        x0, y0, x1, y1 = plan.footprint(plan.window(i))
        allowed[y0:y1, x0:x1] = True
    assert changed.any() and not (changed & ~allowed).any()
    assert {p: sha256_tree(record[p]) for p in ("windows", "canvas")} == kept
    assert np.array_equal(np.asarray(canvas.open_view(str(tmp_path / "pass.json"))[:]), before)


def sha256_tree(folder) -> str:
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_qa_job_re_renders_with_flux_on_a_leased_device_and_a_rerun_starts_over(
    tmp_path, monkeypatch
):
    """run_qa_rerender as the workflow runs it (the tiny Flux loaded from its spec, a device
    leased only once a window is blamed); a second run puts the first run's windows back
    first, drops the pass's re-roll pieces, and ends with the same bytes."""
    from blkassist.refine.jobs import run_qa_rerender

    monkeypatch.setenv("BLKASSIST_DEVICE", "cpu")
    base = textured(96, 128)
    _, before, _ = run_pass(tmp_path, base, geometry(128, 96, 48, 8), ShiftRefiner(amplitude=4))
    settings = {"denoise": 0.3, "seed": 1, "anchor_strength": 1.0, "anchor_levels": 4,
                "quantize": False, "lora_scale": 1.0, "prompt": "", "steps": 2,
                "guidance": 3.5, "max_sequence_length": 32, "tile": 48}  # fmt: skip
    qa = {**GATE, "rounds": 1, "level": 0.01, "texture": None, "fidelity": None}
    job = dict(allocation=str(tmp_path / "pass.json"), mural="m", settings=settings, qa=qa,
               model=str(REPO / "resources/flux/tiny.yaml"), lora=None,
               gpu=GpuSettings(lock_dir=str(tmp_path / "locks"), devices=()),
               threads=1)  # fmt: skip
    run_qa_rerender(output=str(tmp_path / "qa1.json"), **job)
    first = read_json(tmp_path / "qa1.json")
    windows = [e["window"] for e in first["qa"]["rounds"][0]["windows"]]
    assert windows and first["refiner"]["kind"] == "flux-img2img"
    record = read_json(tmp_path / "pass.json")
    gated = np.asarray(canvas.open_canvas(record["canvas"])[:])
    assert not np.array_equal(gated, before)
    (tmp_path / "pass" / "reroll" / "windows").mkdir(parents=True)  # a re-roll made earlier
    run_qa_rerender(output=str(tmp_path / "qa2.json"), **job)
    assert not (tmp_path / "pass" / "reroll").exists()
    second = read_json(tmp_path / "qa2.json")
    assert second["qa"]["rounds"] == first["qa"]["rounds"]
    assert np.array_equal(np.asarray(canvas.open_canvas(record["canvas"])[:]), gated)


def test_sr_tiles_reading_a_rerolled_canvas_are_upscaled_again_as_the_step_would(tmp_path):
    """The SR step after a re-rolled pass: the tiles whose padded input meets the change are
    upscaled again from the canvas as the re-roll sees it (pieces beside the step's canvas),
    equal to the step's own tiles on that changed canvas; the others need nothing."""
    from blkassist.refine.reroll import meets
    from blkassist.refine.reroll_jobs import run_reroll_sr_tiles
    from blkassist.sr.lanczos import LanczosUpscaler
    from blkassist.sr.passes import allocate_pass
    from blkassist.sr.tiler import upscale_tiles
    from blkassist.tiling import PassPlan

    before = textured(100, 140)
    canvas.create(tmp_path / "c0.zarr", 140, 100, 3, 32)[:] = before
    plan = PassPlan(1, 2, 140, 100, 32, 4)
    upscale = {"model": "lanczos", "pad": 8, "precision": "auto"}
    allocate_pass(plan.geometry(), str(tmp_path / "c0.zarr"), str(tmp_path / "c1.zarr"),
                  str(tmp_path / "c1.progress"), str(tmp_path / "c1.json"), upscale)  # fmt: skip
    box = (40, 30, 70, 52)  # what a re-roll changed in the canvas the step reads
    changed = before.copy()
    changed[30:52, 40:70] = 255 - changed[30:52, 40:70]
    canvas.save_piece(tmp_path / "piece.zarr", changed[30:52, 40:70])
    spec = {"canvas": str(tmp_path / "c0.zarr"),
            "overlays": [{"box": list(box), "path": str(tmp_path / "piece.zarr")}]}  # fmt: skip
    tiles = [t for t in plan.tiles_between(0, plan.tile_count)
             if meets(t.padded(8, 140, 100), box)]  # fmt: skip
    members = [{"tile": t.index, "key": f"k{t.index}", "reads": ["x"],
                "path": str(tmp_path / f"pieces/{t.index}")} for t in tiles]  # fmt: skip
    gpu = GpuSettings(lock_dir=str(tmp_path / "locks"), devices=())
    run_reroll_sr_tiles(str(tmp_path / "c1.json"), members, spec, None, 1, gpu, 1,
                        str(tmp_path / "t.done"))  # fmt: skip
    whole = canvas.create(tmp_path / "whole.zarr", 280, 200, 3, 64)
    canvas.create(tmp_path / "src.zarr", 140, 100, 3, 32)[:] = changed
    source = canvas.open_canvas(tmp_path / "src.zarr")
    every = plan.tiles_between(0, plan.tile_count)
    upscale_tiles(plan, every, source, whole, LanczosUpscaler(), 8, ProgressLog(tmp_path / "p", 0))
    expected = np.asarray(whole[:])
    assert 0 < len(tiles) < plan.tile_count
    for tile in tiles:
        piece = np.asarray(canvas.open_canvas(tmp_path / f"pieces/{tile.index}.zarr")[:])
        y, x = tile.y * 2, tile.x * 2
        np.testing.assert_array_equal(
            piece, expected[y : y + piece.shape[0], x : x + piece.shape[1]]
        )
        assert read_json(tmp_path / f"pieces/{tile.index}.json")["tile"] == tile.index
    assert read_json(tmp_path / "t.done")["upscaled"] == [t.index for t in tiles]
