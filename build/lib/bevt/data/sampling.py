"""Which frames of a video make a clip: interval sampling, segment sampling, multi-view testing.

Every sampler is a small callable `sampler(num_frames, generator=None) -> list[int]` (display
order). `generator=None` means test mode (deterministic, centred); a `torch.Generator` means
training mode (random offsets drawn from it, so a clip is reproducible from its seed).
A video that cannot give a clip raises `ValueError`, which decoding reports as "too short".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _uniform(generator: torch.Generator, high: float) -> float:
    return float(torch.rand((), generator=generator)) * high


@dataclass(frozen=True)
class IntervalSampler:
    """`clip_len` frames `frame_interval` apart (pretraining: 16 x 8; K400 finetuning: 32 x 2).

    Training draws the start uniformly; testing takes the centred clip. A video shorter than the
    clip's span (but with at least `clip_len` frames) gets the largest interval that fits, so the
    clip stays in temporal order instead of wrapping around.
    """

    clip_len: int
    frame_interval: int = 1

    def __post_init__(self):
        if self.clip_len < 1 or self.frame_interval < 1:
            raise ValueError(f"clip_len and frame_interval must be >= 1, got {self.clip_len}, {self.frame_interval}")

    def interval_for(self, num_frames: int) -> int:
        if num_frames < self.clip_len:
            raise ValueError(f"{num_frames} frames, need at least {self.clip_len}")
        if self.clip_len == 1:
            return 1
        return min(self.frame_interval, (num_frames - 1) // (self.clip_len - 1))

    def span(self, interval: int) -> int:
        return (self.clip_len - 1) * interval + 1

    def __call__(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        interval = self.interval_for(num_frames)
        slack = num_frames - self.span(interval)
        start = slack // 2 if generator is None else int(torch.randint(slack + 1, (), generator=generator))
        return [start + i * interval for i in range(self.clip_len)]

    def reachable(self, num_frames: int) -> list[tuple[int, int]]:
        """(first, last) frame of every clip training can draw (test views are among them)."""
        interval = self.interval_for(num_frames)
        span = self.span(interval)
        return [(start, start + span - 1) for start in range(num_frames - span + 1)]

    def test_views(self, num_frames: int, num_clips: int) -> list[list[int]]:
        """`num_clips` clips with evenly spaced starts, each centred in its share of the video."""
        interval = self.interval_for(num_frames)
        slack = num_frames - self.span(interval)
        share = (slack + 1) / num_clips
        starts = [int(share * (k + 0.5)) for k in range(num_clips)]
        return [[s + i * interval for i in range(self.clip_len)] for s in starts]


@dataclass(frozen=True)
class SegmentSampler:
    """One frame from each of `num_segments` equal segments (SSv2, TSN-style).

    Training takes a random frame in each segment, testing the middle one. Videos with fewer
    frames than segments repeat frames, in order.
    """

    num_segments: int

    def __post_init__(self):
        if self.num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {self.num_segments}")

    def _at(self, num_frames: int, offsets: list[float]) -> list[int]:
        if num_frames < 1:
            raise ValueError("video has no frames")
        length = num_frames / self.num_segments
        return [min(int(length * (k + offsets[k])), num_frames - 1) for k in range(self.num_segments)]

    def __call__(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        if generator is None:
            return self._at(num_frames, [0.5] * self.num_segments)
        return self._at(num_frames, [_uniform(generator, 1.0) for _ in range(self.num_segments)])

    def reachable(self, num_frames: int) -> list[tuple[int, int]]:
        """(first, last) frame of the clips training can draw: any frame of the first segment
        starts one, and the longest ends at the last frame of the last segment."""
        if num_frames < 1:
            raise ValueError("video has no frames")
        return [(first, num_frames - 1) for first in range(math.ceil(num_frames / self.num_segments))]

    def test_views(self, num_frames: int, num_clips: int) -> list[list[int]]:
        """`num_clips` clips, clip k taking the frame at (k + 0.5) / num_clips of every segment."""
        return [self._at(num_frames, [(k + 0.5) / num_clips] * self.num_segments) for k in range(num_clips)]


def views_to_indices(views: list[list[int]]) -> list[int]:
    """Flatten test views so a video is decoded once for all its clips."""
    return [i for view in views for i in view]
