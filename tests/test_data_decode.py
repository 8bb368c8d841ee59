"""Decoding real files: frames in the order a player shows them for every kind of stream (B-frames
in AVI and mp4, packed B-frames, variable frame rate, no or repeated timestamps), lying headers,
and every kind of broken file."""

import struct
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from bevt.data import decode
from bevt.data.decode import UnreadableSample, open_video, index_packets, read_clip
from bevt.data.sampling import IntervalSampler, SegmentSampler
from videos import (
    decode_everything, frame_number, numbered_frame, read_frames, write_packed_avi, write_repeated_pts_mkv,
    write_video,
)

FRAMES = 60


def vfr_pts(count: int) -> list[int]:
    """Irregular frame times in ms (20 to 90 ms apart), as phone videos have them."""
    return np.cumsum(np.random.default_rng(0).integers(20, 90, count)).tolist()


STREAMS = {
    "mpeg4_bframes.avi": lambda p: write_video(p, FRAMES, "mpeg4", {"bf": "2", "g": "12"}),
    "packed_bframes.avi": lambda p: write_packed_avi(p, FRAMES),
    "h264_bframes.mp4": lambda p: write_video(p, FRAMES, "libx264", {"bf": "3", "g": "12"}),
    "vfr.mp4": lambda p: write_video(p, FRAMES, "libx264", {"bf": "2", "g": "10"}, pts=vfr_pts(FRAMES),
                                     time_base=Fraction(1, 1000)),
    "no_stored_pts.m4v": lambda p: write_video(p, FRAMES, "mpeg4", {"bf": "2", "g": "12"}, fmt="m4v"),
    # raw H.264: packets and decoded frames carry no pts at all
    "missing_pts_bframes.h264": lambda p: write_video(p, FRAMES, "libx264", {"bf": "3", "g": "12"}, fmt="h264"),
    "repeated_pts.mkv": lambda p: write_repeated_pts_mkv(p, FRAMES),
    "vp9.webm": lambda p: write_video(p, FRAMES, "libvpx-vp9", {"g": "12"}),
}


def clips_to_check(num_frames: int) -> list[list[int]]:
    """Every clip start of plain consecutive windows and of the recipe samplers' interval
    clips, test views of both samplers, and random segment clips."""
    clips = [list(range(start, start + 8)) for start in range(num_frames - 7)]
    for sampler in (IntervalSampler(8, 2), IntervalSampler(4, 8), IntervalSampler(16, 3)):
        interval = sampler.interval_for(num_frames)
        slack = num_frames - sampler.span(interval)
        clips += [[start + i * interval for i in range(sampler.clip_len)] for start in range(slack + 1)]
        clips += sampler.test_views(num_frames, 3)
    segments = SegmentSampler(8)
    clips += segments.test_views(num_frames, 4)
    clips += [segments(num_frames, torch.Generator().manual_seed(seed)) for seed in range(20)]
    return clips


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_clip_start_shows_what_a_player_shows(tmp_path, name):
    path = STREAMS[name](str(tmp_path / name))
    player = decode_everything(path)
    assert [frame_number(f) for f in player] == list(range(FRAMES))  # the test video itself is right
    for indices in clips_to_check(FRAMES):
        clip, chosen = read_clip(path, lambda num_frames: indices)
        assert chosen == indices
        for got, i in zip(clip, indices):
            if not np.array_equal(got, player[i]):
                pytest.fail(f"{name}: clip {indices} has frame {frame_number(got)} where frame {i} belongs")


def test_packed_bframes_have_swapped_pts_that_the_reader_ignores(tmp_path):
    """Why timestamps derived by FFmpeg cannot name frames: the decoder's pts come out of order."""
    path = write_packed_avi(tmp_path / "packed.avi", 12)
    with av.open(path) as container:
        stamps = [frame.pts for frame in container.decode(video=0)]
    assert stamps != sorted(stamps)
    np.testing.assert_array_equal(read_frames(path, [3, 4, 5]), np.stack(decode_everything(path)[3:6]))


@pytest.mark.parametrize("name, seekable", [
    ("mpeg4_bframes.avi", True),  # FFmpeg derives right pts for unpacked MPEG-4 Part 2
    ("packed_bframes.avi", False),
    ("h264_bframes.mp4", True),
    ("vfr.mp4", True),
    ("no_stored_pts.m4v", False),
    ("missing_pts_bframes.h264", False),
    ("repeated_pts.mkv", False),
    ("vp9.webm", True),
])
def test_which_streams_may_seek(tmp_path, name, seekable):
    path = STREAMS[name](str(tmp_path / name))
    with open_video(path) as container:
        index = index_packets(container, path)
    assert index.seekable == seekable and index.num_packets == FRAMES
    if name == "vp9.webm":
        assert index.reorder_depth == 0  # no B-frames: nothing presents out of decode order
    if name == "h264_bframes.mp4":
        assert index.reorder_depth >= 2


def test_pts_out_of_presentation_order_are_caught_while_seeking(tmp_path, monkeypatch):
    """The safety net under the index: were packed B-frames not recognised, the seek path would
    meet their swapped pts, decoding the reorder depth past the last wanted frame would show
    them out of order, and the clip would be decoded from the start instead."""
    monkeypatch.setattr(decode, "MPEG4_PICTURE_START", b"no packet holds this" * 4)
    path = write_packed_avi(tmp_path / "packed.avi", FRAMES)
    with open_video(path) as container:
        assert index_packets(container, path).seekable  # fooled
    player = decode_everything(path)
    for indices in [[i] for i in range(FRAMES)] + [list(range(i, i + 3)) for i in range(FRAMES - 2)]:
        clip = read_frames(path, indices)
        assert [frame_number(f) for f in clip] == [frame_number(player[i]) for i in indices]


def test_a_seek_that_misses_falls_back_to_decoding_from_the_start(tmp_path, monkeypatch):
    """If seeking lands somewhere useless (here: past every frame), the clip still comes right."""
    path = write_video(tmp_path / "b.mp4", 40, "libx264", {"bf": "3", "g": "8"})
    real_seek = av.container.InputContainer.seek

    def seek_to_the_end(self, offset, **kwargs):
        return real_seek(self, 10**9, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", seek_to_the_end)
    clip = read_frames(path, [20, 21, 22])
    assert [frame_number(f) for f in clip] == [20, 21, 22]


def frame_count(path) -> int:
    with open_video(path) as container:
        return index_packets(container, path).num_packets


def patch_avi_frame_count(path, claimed: int) -> None:
    """Overwrite both AVI header counts: avih.dwTotalFrames and the video strh.dwLength."""
    data = bytearray(open(path, "rb").read())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, claimed)
    struct.pack_into("<I", data, strh + 8 + 32, claimed)
    open(path, "wb").write(data)


def test_header_frame_count_is_not_trusted(tmp_path):
    path = write_video(tmp_path / "liar.avi", 68, "mpeg4")
    patch_avi_frame_count(path, 444)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 444  # the header really lies
    assert frame_count(path) == 68
    sampler = IntervalSampler(16, 4)
    clip, indices = read_clip(path, sampler)  # centred clip computed from the 68 real frames
    assert indices == sampler(68) and max(indices) < 68
    reference = decode_everything(path)
    np.testing.assert_array_equal(clip, np.stack([reference[i] for i in indices]))
    with pytest.raises(UnreadableSample, match="too short: frame 443 requested, video has 68 frames"):
        read_frames(path, [443])  # what trusting the header would have asked for


def test_webm_without_header_count(tmp_path):
    path = write_video(tmp_path / "nocount.webm", 20, "libvpx-vp9")
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0
    assert frame_count(path) == 20


def test_truncated_file(tmp_path):
    # moov atom in front (as streaming downloads have it): the header promises 60 frames, the
    # cut file holds fewer, and the last one is incomplete.
    path = write_video(tmp_path / "full.mp4", 60, "libx264", container_options={"movflags": "faststart"})
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    num_frames = frame_count(str(cut))
    assert 0 < num_frames < 60
    with pytest.raises(UnreadableSample, match="^.*truncated: header says 60 frames") as err:
        read_frames(str(cut), [num_frames - 1])
    assert err.value.reason.startswith("truncated")
    # moov atom at the end (the muxer's default): the cut file has no index at all.
    plain = write_video(tmp_path / "plain.mp4", 30, "libx264")
    cut_plain = tmp_path / "cut_plain.mp4"
    cut_plain.write_bytes(open(plain, "rb").read()[:1500])
    with pytest.raises(UnreadableSample, match="undecodable: (cannot open container|no video stream)"):
        read_clip(str(cut_plain), IntervalSampler(4, 2))


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableSample) as err:
        read_clip(str(empty), IntervalSampler(4))
    assert err.value.reason == "empty: zero bytes"


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableSample) as err:
        read_clip(str(tmp_path / "nowhere.mp4"), IntervalSampler(4))
    assert err.value.reason == "missing: no such file"


def test_not_a_video(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 20)
    with pytest.raises(UnreadableSample, match="undecodable"):
        read_clip(str(junk), IntervalSampler(4))


def test_too_short_video(tmp_path):
    path = write_video(tmp_path / "short.mp4", 10, "libx264")
    with pytest.raises(UnreadableSample, match="too short: 10 frames, need at least 16"):
        read_clip(path, IntervalSampler(16, 8))
    _, indices = read_clip(path, IntervalSampler(8, 8))  # fits with a smaller interval, in order
    assert indices == list(range(8)) or indices == list(range(1, 9)) or indices == list(range(2, 10))
