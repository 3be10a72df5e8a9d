import math

import pytest

from blkassist.tiling import pass_scales, plan_mural


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (2, (2,)),
        (3, (3,)),
        (4, (4,)),
        (2.5, (3,)),
        (6, (3, 2)),
        (8, (4, 2)),
        (16, (4, 4)),
        (12, (4, 3)),
        (17, (3, 3, 2)),
        (64, (4, 4, 4)),
    ],
)
def test_pass_scales_are_fewest_passes_with_smallest_cover(total, expected):
    assert pass_scales(total) == expected
    assert math.prod(expected) >= total


def test_scale_at_most_one_is_rejected():
    with pytest.raises(ValueError, match="greater than 1"):
        pass_scales(1)


@pytest.mark.parametrize(
    ("width", "height", "tile", "per_job"),
    [(1000, 700, 128, 5), (77, 301, 64, 1), (512, 512, 512, 16)],
)
def test_batches_cover_every_pixel_exactly_once(width, height, tile, per_job):
    plan = plan_mural(width, height, scale=4, tile=tile, tiles_per_job=per_job).passes[0]
    covered = {}
    for batch in range(plan.batch_count):
        for t in plan.batch_tiles(batch):
            assert t.x % tile == 0 and t.y % tile == 0  # chunk-aligned
            assert (t.x, t.y) not in covered
            covered[(t.x, t.y)] = t
    assert sum(t.width * t.height for t in covered.values()) == width * height
    assert len(covered) == plan.tile_count


def test_plan_for_the_production_mural():
    plan = plan_mural(16000, 12000, scale=4, tile=512, tiles_per_job=16)
    (only,) = plan.passes
    assert (plan.final_width, plan.final_height) == (64000, 48000)
    assert only.tile_count == 32 * 24 and only.batch_count == 48
    assert only.output_chunk == 2048
    assert not plan.needs_final_resize


def test_target_long_side_gives_exact_size_and_final_resize():
    plan = plan_mural(1000, 600, target_long_side=2500, tile=256, tiles_per_job=4)
    assert [p.scale for p in plan.passes] == [3]
    assert (plan.final_width, plan.final_height) == (2500, 1500)
    assert (plan.canvas_width, plan.canvas_height) == (3000, 1800)
    assert plan.needs_final_resize


def test_multi_pass_chains_canvas_sizes():
    plan = plan_mural(100, 50, scale=12, tile=32, tiles_per_job=4)
    first, second = plan.passes
    assert (first.scale, second.scale) == (4, 3)
    assert (second.input_width, second.input_height) == (400, 200)
    assert (plan.final_width, plan.final_height) == (1200, 600)


def test_padded_window_is_clipped_to_the_canvas():
    plan = plan_mural(100, 80, scale=2, tile=64, tiles_per_job=4).passes[0]
    assert plan.tile_at(0).padded(16, 100, 80) == (0, 0, 80, 80)
    assert plan.tile_at(3).padded(16, 100, 80) == (48, 48, 100, 80)
