import pytest
import torch

from bevt.masking import (
    BlockwiseMaskGenerator,
    Random3DMaskGenerator,
    TubeMaskGenerator,
    build_mask_generator,
    mask_to_patch_grid,
    mask_to_token_grid,
)


def test_blockwise_statistics_match_beit():
    gen = BlockwiseMaskGenerator(grid=(14, 14), num_masked=98, min_cells=16)
    g = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(2000):
        mask, blocks = gen.draw_blocks(g)
        assert mask.shape == (14, 14) and mask.dtype == torch.bool
        counts.append(int(mask.sum()))
        for block in blocks:
            # Areas come from [min_cells, missing]; only the top-up blocks drawn when fewer than
            # 16 cells are missing may be smaller (they come from [missing, 16]).
            assert block.area_drawn >= min(16, block.remaining_before) - 1e-9
            assert block.height < 14 and block.width < 14
        # the first block is drawn with 98 cells missing, so from [16, 98]
        assert blocks[0].area_drawn >= 16
    counts = torch.tensor(counts, dtype=torch.float)
    assert 97.2 <= counts.mean() <= 97.9
    assert (counts == 98).float().mean() >= 0.6
    assert counts.max() <= 98


def test_generators_are_reproducible_and_return_grid_shape():
    for gen in [
        BlockwiseMaskGenerator(grid=(14, 14), num_masked=98, min_cells=16),
        TubeMaskGenerator(grid=(8, 14, 14), num_masked=98),
        Random3DMaskGenerator(grid=(8, 14, 14), num_masked=784),
    ]:
        a = gen(generator=torch.Generator().manual_seed(3))
        b = gen(generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == gen.grid and a.dtype == torch.bool
        assert gen().shape == gen.grid  # global generator


def test_tube_masks_share_one_2d_mask_and_spread_lengths():
    gen = TubeMaskGenerator(grid=(8, 14, 14), num_masked=98)
    g = torch.Generator().manual_seed(0)
    fractions, lengths = [], []
    for _ in range(1000):
        mask = gen(generator=g)
        masked_steps = [t for t in range(8) if mask[t].any()]
        for t in masked_steps:
            assert torch.equal(mask[t], mask[masked_steps[0]])
        lengths.append(len(masked_steps))
        fractions.append(mask.float().mean().item())
    assert set(lengths) == {4, 5, 6, 7, 8}
    assert min(lengths.count(n) for n in range(4, 9)) > 120  # ~200 each
    assert abs(sum(fractions) / len(fractions) - 0.375) < 0.02


def _runs(steps, num_steps):
    """Number of consecutive runs of steps on a circle (1 for a wrapped tube)."""
    present = set(steps)
    return sum(1 for t in steps if (t - 1) % num_steps not in present) or 1


def test_tube_wraps_by_default_and_not_with_wrap_false():
    g = torch.Generator().manual_seed(0)
    wrap = TubeMaskGenerator(grid=(8, 4, 4), num_masked=8, min_cells=2, length_range=(0.25, 0.75))
    no_wrap = TubeMaskGenerator(grid=(8, 4, 4), num_masked=8, min_cells=2, length_range=(0.25, 0.75), wrap=False)
    wrapped_any = False
    for _ in range(200):
        steps = wrap.masked_steps(g)
        assert _runs(steps, 8) == 1 and 2 <= len(steps) <= 6
        wrapped_any |= 0 in steps and 7 in steps and len(steps) < 8
        steps = no_wrap.masked_steps(g)
        assert steps == list(range(steps[0], steps[0] + len(steps))) and steps[-1] <= 7
    assert wrapped_any


@pytest.mark.parametrize(
    "tube_length, expected", [((0.25, 0.75), {2, 3, 4, 5, 6}), ((0.75, 1.0), {6, 7, 8}), ((1.0, 1.0), {8})]
)
def test_tube_length_ranges(tube_length, expected):
    gen = build_mask_generator("tube", (8, 14, 14), tube_length=tube_length)
    g = torch.Generator().manual_seed(1)
    assert {len(gen.masked_steps(g)) for _ in range(300)} == expected


def test_table8_variants():
    g = torch.Generator().manual_seed(0)
    random3d = build_mask_generator("random3d", (8, 14, 14), ratio=0.5)
    assert all(int(random3d(g).sum()) == 784 for _ in range(5))

    frame_diff = build_mask_generator("frame_diff", (8, 14, 14))
    differs = False
    for _ in range(20):
        mask = frame_diff(g)
        steps = [t for t in range(8) if mask[t].any()]
        assert _runs(steps, 8) == 1  # tube timing
        differs |= any(not torch.equal(mask[t], mask[steps[0]]) for t in steps)
    assert differs

    random_frame = build_mask_generator("random_frame", (8, 14, 14))
    scattered = False
    for _ in range(50):
        mask = random_frame(g)
        steps = [t for t in range(8) if mask[t].any()]
        assert all(torch.equal(mask[t], mask[steps[0]]) for t in steps)
        scattered |= _runs(steps, 8) > 1
    assert scattered

    for ratio in (0.4, 0.6, 0.7):
        gen = build_mask_generator("blockwise", (14, 14), ratio=ratio)
        assert gen.num_masked == round(ratio * 196)
        assert gen(g).sum() <= gen.num_masked


def test_factory_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown mask kind"):
        build_mask_generator("tubes", (8, 14, 14))
    with pytest.raises(ValueError, match="3-d grid"):
        build_mask_generator("tube", (14, 14))
    with pytest.raises(ValueError, match="tube lengths"):
        build_mask_generator("tube", (8, 14, 14), tube_length=(0.9, 0.95))
    with pytest.raises(ValueError, match="ratio"):
        build_mask_generator("blockwise", (14, 14), ratio=1.5)


def test_upsampling_helpers():
    cells = torch.zeros(2, 8, 14, 14, dtype=torch.bool)
    cells[0, 3, 5, 6] = True
    patches = mask_to_patch_grid(cells)
    assert patches.shape == (2, 8, 56, 56)
    assert patches[0, 3, 20:24, 24:28].all() and patches.sum() == 16
    tokens = mask_to_token_grid(cells)
    assert tokens.shape == (2, 16, 14, 14)
    assert tokens[0, 6, 5, 6] and tokens[0, 7, 5, 6] and tokens.sum() == 2
    assert mask_to_patch_grid(cells[:, 0]).shape == (2, 56, 56)
