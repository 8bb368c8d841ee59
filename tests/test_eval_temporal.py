"""The temporal dependency test's clip transformations."""

import torch

from bevt.eval.temporal import apply_mode, shuffle_frames, single_frame


def _clips():
    # frame t of clip n is filled with the value 10 n + t, so frames are identifiable
    values = 10 * torch.arange(3).view(3, 1, 1, 1, 1) + torch.arange(8).view(1, 1, 8, 1, 1)
    return values.expand(3, 3, 8, 4, 4).float()


def test_single_frame_repeats_one_frame_of_the_same_clip():
    clips = _clips()
    out = single_frame(clips, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape
    for n in range(3):
        frame = out[n, 0, 0, 0, 0]
        assert (out[n] == frame).all() and 10 * n <= frame < 10 * n + 8


def test_shuffle_permutes_frames_within_each_clip():
    clips = _clips()
    out = shuffle_frames(clips, torch.Generator().manual_seed(0))
    orders = out[:, 0, :, 0, 0]
    assert all(sorted(orders[n].tolist()) == clips[n, 0, :, 0, 0].tolist() for n in range(3))
    assert not torch.equal(out, clips)
    assert (out == out[:, :1, :, :1, :1]).all()  # each frame stays whole


def test_normal_mode_is_identity():
    clips = _clips()
    assert apply_mode("normal", clips, torch.Generator()) is clips
