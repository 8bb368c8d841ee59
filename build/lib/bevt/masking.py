"""Mask generators for masked image and video modeling, on the tokenizer grid.

A mask cell is one target token: 16x16 pixels of the model input (H/16 x W/16 cells per image or
per temporal step). True = masked. Every generator draws from a passed `torch.Generator` (or
torch's global one), so a seeded loader reproduces its masks.

- `BlockwiseMaskGenerator`: BEiT's blockwise masking (image stream, and the 2D part of tubes).
- `TubeMaskGenerator`: BEVT's tube masking (video stream) and two of the paper's Table 8
  variants, frame-diff and random-frame, as options of the same temporal sampler.
- `Random3DMaskGenerator`: Table 8's random-3D (uniform cells).
- `build_mask_generator(kind, grid, ...)`: the same from plain config values.
- `mask_to_patch_grid` / `mask_to_token_grid`: cell masks -> encoder input / per-frame loss masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MASK_KINDS = ("blockwise", "tube", "frame_diff", "random_frame", "random3d")
CELL = 16  # pixels of the model input per mask / token cell (8 of the half-size tokenizer view)
PATCHES_PER_CELL = CELL // 4  # a cell is 4x4 patches of 4x4 pixels
FRAMES_PER_STEP = 2  # the video patch embedding merges 2 frames into one temporal step


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high], both inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


@dataclass(frozen=True)
class Block:
    """One accepted block: its rectangle, the area drawn for it and the cells still missing then."""

    top: int
    left: int
    height: int
    width: int
    area_drawn: float
    remaining_before: int


class BlockwiseMaskGenerator:
    """BEiT blockwise masking: rectangles of random size and aspect until `num_masked` cells.

    Each block draws an area uniformly between `min_cells` and the cells still missing (when fewer
    than `min_cells` are missing the interval is [missing, min_cells], which lets the last blocks
    top the mask up to the exact target), a log-uniform aspect in [min_aspect, 1/min_aspect], and
    a uniform position; it is kept only if it adds between 1 and `missing` new cells. A block gets
    `tries_per_block` attempts; drawing stops at the target or when a block fails every attempt,
    so a mask may fall a few cells short (about 97.5 of 98 on 14x14 on average).
    """

    def __init__(
        self,
        grid: tuple[int, int],
        num_masked: int,
        min_cells: int = 16,
        min_aspect: float = 0.3,
        tries_per_block: int = 10,
    ):
        height, width = grid
        if not 0 <= num_masked <= height * width:
            raise ValueError(f"num_masked={num_masked} must be in [0, {height * width}] for grid {grid}")
        if min_cells < 1 or not 0 < min_aspect <= 1 or tries_per_block < 1:
            raise ValueError("need min_cells >= 1, 0 < min_aspect <= 1 and tries_per_block >= 1")
        self.grid = (height, width)
        self.num_masked = num_masked
        self.min_cells = min_cells
        self.log_aspect_range = (math.log(min_aspect), -math.log(min_aspect))
        self.tries_per_block = tries_per_block

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """-> bool (H, W), True = masked."""
        return self.draw_blocks(generator)[0]

    def draw_blocks(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[Block]]:
        """-> (mask (H, W), the accepted blocks in drawing order); the blocks are for inspection."""
        mask = torch.zeros(self.grid, dtype=torch.bool)
        blocks: list[Block] = []
        count = 0
        while count < self.num_masked:
            block = self._add_block(mask, self.num_masked - count, generator)
            if block is None:
                break
            blocks.append(block)
            count = int(mask.sum())
        return mask, blocks

    def _add_block(self, mask: torch.Tensor, missing: int, generator: torch.Generator | None) -> Block | None:
        grid_h, grid_w = self.grid
        for _ in range(self.tries_per_block):
            area = _uniform(self.min_cells, missing, generator)
            aspect = math.exp(_uniform(*self.log_aspect_range, generator))
            height = round(math.sqrt(area * aspect))
            width = round(math.sqrt(area / aspect))
            if not (height < grid_h and width < grid_w):
                continue
            top = _randint(0, grid_h - height, generator)
            left = _randint(0, grid_w - width, generator)
            region = mask[top : top + height, left : left + width]
            new_cells = height * width - int(region.sum())
            if 0 < new_cells <= missing:
                region.fill_(True)
                return Block(top, left, height, width, area, missing)
        return None


class TubeMaskGenerator:
    """BEVT tube masking on the (T', H, W) grid, plus the Table 8 frame-diff / random-frame variants.

    Picks a number of masked temporal steps uniformly in `length_range` (fractions of T', default
    [0.5, 1.0] -> 4..8 of 8 steps) and which steps:
    - `steps="consecutive"` (tube): a run from a uniform start in [0, T'-1] that wraps around past
      the last step, as the released code does; `wrap=False` draws the start so the run fits.
    - `steps="random"` (random-frame): that many steps anywhere, not necessarily consecutive.
    The masked steps share one blockwise 2D mask of `num_masked` cells, or with
    `per_step_masks=True` (frame-diff) each draws its own.
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        num_masked: int,
        min_cells: int = 16,
        length_range: tuple[float, float] = (0.5, 1.0),
        wrap: bool = True,
        steps: str = "consecutive",
        per_step_masks: bool = False,
    ):
        num_steps, height, width = grid
        self.grid = (num_steps, height, width)
        self.blockwise = BlockwiseMaskGenerator((height, width), num_masked, min_cells)
        self.min_length = math.ceil(length_range[0] * num_steps - 1e-6)
        self.max_length = math.floor(length_range[1] * num_steps + 1e-6)
        if not 1 <= self.min_length <= self.max_length <= num_steps:
            raise ValueError(
                f"length_range={length_range} gives tube lengths {self.min_length}..{self.max_length}, "
                f"which must lie in 1..{num_steps}"
            )
        if steps not in ("consecutive", "random"):
            raise ValueError(f"steps={steps!r} must be 'consecutive' or 'random'")
        self.wrap = wrap
        self.steps = steps
        self.per_step_masks = per_step_masks

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """-> bool (T', H, W), True = masked."""
        mask = torch.zeros(self.grid, dtype=torch.bool)
        shared = None if self.per_step_masks else self.blockwise(generator)
        for step in self.masked_steps(generator):
            mask[step] = self.blockwise(generator) if self.per_step_masks else shared
        return mask

    def masked_steps(self, generator: torch.Generator | None = None) -> list[int]:
        """The temporal steps to mask (draws the length, then the positions)."""
        num_steps = self.grid[0]
        length = _randint(self.min_length, self.max_length, generator)
        if self.steps == "random":
            return sorted(torch.randperm(num_steps, generator=generator)[:length].tolist())
        if self.wrap:
            start = _randint(0, num_steps - 1, generator)
            return [(start + i) % num_steps for i in range(length)]
        start = _randint(0, num_steps - length, generator)
        return list(range(start, start + length))


class Random3DMaskGenerator:
    """Table 8 random-3D: `num_masked` cells of the whole (T', H, W) grid, uniformly at random."""

    def __init__(self, grid: tuple[int, int, int], num_masked: int):
        if not 0 <= num_masked <= math.prod(grid):
            raise ValueError(f"num_masked={num_masked} must be in [0, {math.prod(grid)}] for grid {grid}")
        self.grid = tuple(grid)
        self.num_masked = num_masked

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """-> bool (T', H, W), True = masked."""
        mask = torch.zeros(math.prod(self.grid), dtype=torch.bool)
        mask[torch.randperm(mask.numel(), generator=generator)[: self.num_masked]] = True
        return mask.view(self.grid)


def build_mask_generator(
    kind: str,
    grid: tuple[int, ...],
    ratio: float = 0.5,
    min_cells: int = 16,
    tube_length: tuple[float, float] = (0.5, 1.0),
    wrap: bool = True,
):
    """A generator from plain config values.

    `grid` is (H/16, W/16) for "blockwise", (T', H/16, W/16) for the video kinds. `ratio` is the
    fraction of cells masked per masked step (per image for "blockwise"; for "random3d" of the
    whole grid). `tube_length` is the range of masked steps as fractions of T'.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} must be in [0, 1]")
    expected_dims = 2 if kind == "blockwise" else 3
    if len(grid) != expected_dims:
        raise ValueError(f"mask kind {kind!r} needs a {expected_dims}-d grid, got {tuple(grid)}")
    cells_per_step = round(ratio * grid[-2] * grid[-1])
    if kind == "blockwise":
        return BlockwiseMaskGenerator(tuple(grid), cells_per_step, min_cells)
    if kind == "random3d":
        return Random3DMaskGenerator(tuple(grid), round(ratio * math.prod(grid)))
    return TubeMaskGenerator(
        tuple(grid),
        cells_per_step,
        min_cells,
        length_range=tuple(tube_length),
        wrap=wrap,
        steps="random" if kind == "random_frame" else "consecutive",
        per_step_masks=kind == "frame_diff",
    )


def mask_to_patch_grid(mask: torch.Tensor) -> torch.Tensor:
    """Cell mask (..., h, w) -> encoder patch mask (..., 4h, 4w): one cell covers 4x4 patches."""
    return mask.repeat_interleave(PATCHES_PER_CELL, dim=-2).repeat_interleave(PATCHES_PER_CELL, dim=-1)


def mask_to_token_grid(mask: torch.Tensor) -> torch.Tensor:
    """Video cell mask (..., T', h, w) -> per-frame loss mask (..., T, h, w): each step covers 2 frames."""
    return mask.repeat_interleave(FRAMES_PER_STEP, dim=-3)
