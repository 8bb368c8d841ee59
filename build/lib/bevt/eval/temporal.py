"""The paper's temporal dependency test (section 4, Table 2): how much a prediction needs motion.

- single-frame: one random frame of each clip replaces all its frames (a static clip);
- shuffled: the frames of each clip in a random order.
A model that only reads appearance scores the same on all three; one that reads motion collapses.
"""

from __future__ import annotations

import torch

MODES = ("normal", "single_frame", "shuffled")


def single_frame(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N,3,T,H,W) -> (N,3,T,H,W) where every frame of clip n is its frame t_n, t_n uniform."""
    n, _, t = clips.shape[:3]
    picked = torch.randint(t, (n,), generator=generator).to(clips.device)
    frames = clips[torch.arange(n, device=clips.device), :, picked]  # (N,3,H,W)
    return frames.unsqueeze(2).expand_as(clips).contiguous()


def shuffle_frames(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N,3,T,H,W) -> the same clips, each with its own random frame order."""
    n, c, t, h, w = clips.shape
    order = torch.rand(n, t, generator=generator).argsort(dim=1).to(clips.device)
    return clips.gather(2, order.view(n, 1, t, 1, 1).expand(n, c, t, h, w))


def apply_mode(mode: str, clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Clips as the test `mode` presents them to the model."""
    if mode == "single_frame":
        return single_frame(clips, generator)
    if mode == "shuffled":
        return shuffle_frames(clips, generator)
    return clips
