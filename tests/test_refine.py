"""The diffusion path's library: plans, blend weights, colour anchoring, resume per window,
seam QA, sigmas, and the tiny Flux refiner, with deterministic stand-in refiners."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr

from blkassist import canvas
from blkassist.fsutil import read_json
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

    refiner = FluxRefiner(tiny_flux, steps=3, max_sequence_length=32)
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
def tiny_flux(one_torch_thread):
    from blkassist.flux.loader import load_flux
    from tests.flux_fixtures import TINY_SPEC

    return load_flux(TINY_SPEC)


def test_flux_refiner_is_deterministic_per_window_noise(tiny_flux):
    from blkassist.refine.refiner import FluxRefiner

    refiner = FluxRefiner(tiny_flux, steps=4, max_sequence_length=32)
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
    plain = FluxRefiner(tiny_flux, steps=4, max_sequence_length=32).refine(windows, noise, 0.5)
    with_lora = FluxRefiner(load_flux(TINY_SPEC), lora=lora, steps=4, max_sequence_length=32)
    assert with_lora.describe(0.5)["lora"]["sha256"] == sha256_file(lora)
    lora_result = with_lora.refine(windows, noise, 0.5)
    assert not np.array_equal(lora_result, plain)
    # 8-bit: the LoRA is fused into the weights first (diffusers cannot load it onto qint8).
    eight_bit = FluxRefiner(
        load_flux(TINY_SPEC), lora=lora, steps=4, max_sequence_length=32, quantize=True
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
     for model in ("flux", "resources/flux/tiny.yaml", "spec.yml", "resources/flux/ink")],
)  # fmt: skip
def test_path_choice_and_its_reason(configured, long_side, model, expected):
    path, reason = choose_path(configured, long_side, long_side * 3 // 4, model)
    assert path == expected
    assert str(long_side) in reason if configured == "auto" else configured in reason
    if configured == "auto" and long_side > 8192 and model != "flux":
        assert f"{model} is a demo model" in reason  # why auto did not refine


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
