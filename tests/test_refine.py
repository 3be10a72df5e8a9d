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
from blkassist.refine.anchor import low_frequencies
from blkassist.refine.blend import blend_blocks
from blkassist.refine.jobs import allocate_stage, run_blend, stage_plan
from blkassist.refine.plan import RefinePass, regular_positions, seam_centres
from blkassist.refine.settings import choose_path, plan_stages, refine_settings
from blkassist.refine.sigmas import diffusers_start_sigma, pass_sigmas
from blkassist.refine.windows import pass_seeds, refine_windows
from blkassist.sr.passes import IncompletePassError
from blkassist.sr.tiler import ProgressLog
from tests.conftest import REPO, textured

FLUX_SCHEDULER = {
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


class IdentityRefiner:
    def refine(self, windows, seeds, denoise):
        return windows.copy()

    def describe(self, denoise):
        return {"kind": "identity"}


class ShiftRefiner:
    """Adds a per-window colour offset (from the window's seed) and a little texture: what a
    drifting diffusion model does to flat colour."""

    def __init__(self, amplitude=30, fail_after=None):
        self.amplitude, self.fail_after, self.calls = amplitude, fail_after, 0

    def refine(self, windows, seeds, denoise):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        out = []
        for window, seed in zip(windows, seeds, strict=True):
            rng = np.random.default_rng(seed % 2**32)
            offset = rng.uniform(-self.amplitude, self.amplitude, window.shape[2])
            grain = rng.normal(0, 3, window.shape)
            out.append(np.clip(window + offset + grain, 0, 255).round().astype(np.uint8))
        return np.stack(out)

    def describe(self, denoise):
        return {"kind": "shift"}


def geometry(width, height, tile, overlap, coherence=False):
    return {
        "step": 1,
        "number": 2 if coherence else 1,
        "coherence": coherence,
        "width": width,
        "height": height,
        "tile": tile,
        "overlap": overlap,
    }


def run_pass(tmp_path, base, geo, refiner, *, strength=1.0, tiles_per_job=3, blocks_per_job=2):
    """One refinement pass in process, through the same functions as the workflow's jobs."""
    base_path = tmp_path / "base.zarr"
    if not base_path.exists():
        canvas.create(base_path, base.shape[1], base.shape[0], base.shape[2], 64)[:] = base
    folder = tmp_path / "pass"
    allocate_stage(geo, str(base_path), str(base_path), str(folder), str(tmp_path / "pass.json"))
    record = read_json(tmp_path / "pass.json")
    plan = stage_plan(record, tiles_per_job, blocks_per_job)
    store = zarr.open_array(record["windows"], mode="r+")
    source = canvas.open_canvas(record["input_canvas"])
    reports = [
        refine_windows(
            plan, batch, source, source, store, lambda: refiner,
            ProgressLog(record["progress"], batch), denoise=0.3,
            seeds=pass_seeds(1, "m", plan), anchor_strength=strength, anchor_levels=4,
        )
        for batch in range(plan.batch_count)
    ]  # fmt: skip
    target = canvas.open_canvas(record["canvas"], mode="r+")
    for blend in range(plan.blend_count):
        blend_blocks(plan, blend, store, target)
    return plan, np.asarray(target[:]), reports


# -- plans --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "tile", "overlap", "coherence"),
    list(itertools.product([64, 100, 257, 1000, 4099], [64, 96, 256], [8, 24, 32], [False, True])),
)
def test_windows_cover_the_canvas_with_at_least_the_overlap(length, tile, overlap, coherence):
    plan = RefinePass(1, 1, coherence, length, 48, tile, overlap, 4, 4)
    size = plan.window_width
    covered = np.zeros(length, int)
    for x in plan.xs:
        covered[x : x + size] += 1
    assert covered.min() >= 1 and plan.xs[0] == 0 and plan.xs[-1] + size == length
    gaps = [b - a for a, b in itertools.pairwise(plan.xs)]
    if not coherence:
        assert all(size - gap >= overlap for gap in gaps)  # neighbours share >= overlap
    else:  # every seam of the regular grid lies in the middle of a coherence window
        regular = regular_positions(length, size, overlap)
        for seam in seam_centres(regular, size):
            assert any(abs(x + size // 2 - seam) <= 1 for x in plan.xs)


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
    record = read_json(tmp_path / "killed" / "pass.json")
    plan = stage_plan(record, 20, 2)
    # A blend never composes windows that were not refined (e.g. markers of another batching).
    with pytest.raises(IncompletePassError, match=r"not refined \(first: \[3, "):
        run_blend(str(tmp_path / "killed" / "pass.json"), 0,
                  {"tiles_per_job": 20, "blocks_per_job": 2}, tmp_path / "blend.done")  # fmt: skip
    store = zarr.open_array(record["windows"], mode="r+")
    source = canvas.open_canvas(record["input_canvas"])
    report = refine_windows(
        plan, 0, source, source, store, ShiftRefiner, ProgressLog(record["progress"], 0),
        denoise=0.3, seeds=pass_seeds(1, "m", plan), anchor_strength=1.0, anchor_levels=4,
    )  # fmt: skip
    assert report.skipped == 3
    target = canvas.open_canvas(record["canvas"], mode="r+")
    for blend in range(plan.blend_count):
        blend_blocks(plan, blend, store, target)
    assert np.array_equal(np.asarray(target[:]), reference)


# -- seam QA ------------------------------------------------------------------------------
def test_seam_heatmap_and_thumbnail(tmp_path):
    base = textured(300, 420)
    plan = RefinePass(1, 1, False, 420, 300, 96, 16, 4, 4)
    thumb, factor = seams.thumbnail(base, long_side=100)
    assert factor == 5 and thumb.shape == (60, 84, 3)
    assert abs(thumb.mean() - base.mean()) < 1
    image = seams.heatmap(thumb, factor, seams.measure(plan, base, base))
    assert image.size == (84, 60)


# -- sigmas -------------------------------------------------------------------------------
@pytest.mark.parametrize("denoise", [0.12, 0.15, 0.2, 0.3, 0.37, 1.0])
@pytest.mark.parametrize("steps", [4, 28, 50])
def test_pass_starts_at_denoise_whatever_the_tile_size(denoise, steps):
    sigmas = pass_sigmas(denoise, steps, FLUX_SCHEDULER)
    assert sigmas[0] == denoise and sigmas[-1] == 0
    assert np.all(np.diff(sigmas) < 0) and len(sigmas) >= 2


def test_diffusers_strength_would_start_higher_at_larger_tiles():
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


def test_flux_refiner_is_deterministic_per_window_seed(tiny_flux):
    from blkassist.refine.refiner import FluxRefiner

    refiner = FluxRefiner(tiny_flux, steps=8, max_sequence_length=32)
    windows = np.stack([textured(40, 56, seed=1), textured(40, 56, seed=2)])  # not x16
    first = refiner.refine(windows, [5, 6], 0.3)
    assert first.shape == windows.shape and first.dtype == np.uint8
    assert np.array_equal(refiner.refine(windows, [5, 6], 0.3), first)
    # A window's noise is its own: alone it comes out the same up to batched arithmetic.
    alone = refiner.refine(windows[:1], [5], 0.3)[0]
    assert np.abs(alone.astype(int) - first[0]).max() <= 2
    other_seed = refiner.refine(windows[:1], [7], 0.3)[0]
    assert np.abs(other_seed.astype(int) - first[0]).max() > 10
    described = refiner.describe(0.3)
    assert described["start_sigma"] == 0.3 and described["lora"] is None
    rgba = textured(48, 48, bands=4, seed=3)[None]
    assert np.array_equal(refiner.refine(rgba, [1], 0.2)[0, ..., 3], rgba[0, ..., 3])


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
    plain = FluxRefiner(tiny_flux, steps=8, max_sequence_length=32).refine(windows, [1], 0.5)
    with_lora = FluxRefiner(load_flux(TINY_SPEC), lora=lora, steps=8, max_sequence_length=32)
    assert with_lora.describe(0.5)["lora"]["sha256"] == sha256_file(lora)
    lora_result = with_lora.refine(windows, [1], 0.5)
    assert not np.array_equal(lora_result, plain)
    # 8-bit: the LoRA is fused into the weights first (diffusers cannot load it onto qint8).
    eight_bit = FluxRefiner(
        load_flux(TINY_SPEC), lora=lora, steps=8, max_sequence_length=32, quantize=True
    )
    described = eight_bit.describe(0.5)
    assert described["flux"]["quantized"] == "qint8"
    assert described["lora"]["fused_before_quantizing"]
    quantized = eight_bit.refine(windows, [1], 0.5).astype(int)
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
    assert (settings.tile, settings.overlap, settings.steps) == (1024, 96, 28)
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
