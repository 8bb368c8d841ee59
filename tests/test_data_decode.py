"""Decoding real files: three codecs/containers, lying headers, and every kind of broken file."""

import struct

import av
import numpy as np
import pytest

from bevt.data.decode import UnreadableSample, index_video, read_clip, read_frames
from bevt.errors import DataError
from bevt.data.sampling import IntervalSampler

WIDTH, HEIGHT = 48, 32


def numbered_frames(count: int) -> np.ndarray:
    """Frames that differ a lot from each other, so a wrong frame cannot pass for the right one."""
    frames = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(count):
        frames[i, :, :, 0] = (i * 37) % 256
        frames[i, :, (i * 5) % WIDTH] = 255
    return frames


def write_video(path, frames: np.ndarray, codec: str = "libx264", options=None, container_options=None) -> str:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = options or {}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decode_everything(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize(
    "name, codec, options",
    [
        ("clip.mp4", "libx264", {"g": "8", "bf": "3"}),  # H.264 with B-frames: decode order != display order
        ("clip.webm", "libvpx-vp9", {"g": "8"}),
        ("clip.avi", "mpeg4", {"g": "8", "bf": "2"}),
    ],
)
def test_reads_exactly_the_requested_frames(tmp_path, name, codec, options):
    path = write_video(tmp_path / name, numbered_frames(40), codec, options)
    reference = decode_everything(path)
    assert index_video(path).num_frames == len(reference) == 40
    for indices in ([0, 1, 2], [3, 11, 19, 27, 35], [39], [30, 30, 5]):  # across keyframes, repeats, any order
        clip = read_frames(path, indices)
        assert clip.dtype == np.uint8 and clip.shape == (len(indices), HEIGHT, WIDTH, 3)
        for got, i in zip(clip, indices):
            np.testing.assert_array_equal(got, reference[i])


def patch_avi_frame_count(path, claimed: int) -> None:
    """Overwrite both AVI header counts: avih.dwTotalFrames and the video strh.dwLength."""
    data = bytearray(open(path, "rb").read())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    struct.pack_into("<I", data, avih + 8 + 16, claimed)
    struct.pack_into("<I", data, strh + 8 + 32, claimed)
    open(path, "wb").write(data)


def test_header_frame_count_is_not_trusted(tmp_path):
    path = write_video(tmp_path / "liar.avi", numbered_frames(68), "mpeg4")
    patch_avi_frame_count(path, 444)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 444  # the header really lies
    assert index_video(path).num_frames == 68
    sampler = IntervalSampler(16, 4)
    clip, indices = read_clip(path, sampler)  # centred clip computed from the 68 real frames
    assert indices == sampler(68) and max(indices) < 68
    reference = decode_everything(path)
    np.testing.assert_array_equal(clip, np.stack([reference[i] for i in indices]))
    with pytest.raises(UnreadableSample, match="too short: frame 443 requested, video has 68 frames"):
        read_frames(path, [443])  # what trusting the header would have asked for


def test_webm_without_header_count(tmp_path):
    path = write_video(tmp_path / "nocount.webm", numbered_frames(20), "libvpx-vp9")
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0
    assert index_video(path).num_frames == 20


def test_truncated_file(tmp_path):
    # moov atom in front (as streaming downloads have it): the header promises 60 frames, the
    # cut file holds fewer, and the last one is incomplete.
    path = write_video(tmp_path / "full.mp4", np.random.default_rng(0).integers(0, 256, (60, HEIGHT, WIDTH, 3),
                       dtype=np.uint8), container_options={"movflags": "faststart"})
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    num_frames = index_video(str(cut)).num_frames
    assert 0 < num_frames < 60
    with pytest.raises(UnreadableSample, match="^.*truncated: header says 60 frames") as err:
        read_frames(str(cut), [num_frames - 1])
    assert err.value.reason.startswith("truncated")
    # moov atom at the end (the muxer's default): the cut file has no index at all.
    plain = write_video(tmp_path / "plain.mp4", numbered_frames(30))
    cut_plain = tmp_path / "cut_plain.mp4"
    cut_plain.write_bytes(open(plain, "rb").read()[:1500])
    with pytest.raises(UnreadableSample, match="undecodable: cannot open container"):
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
    path = write_video(tmp_path / "short.mp4", numbered_frames(10))
    with pytest.raises(UnreadableSample, match="too short: 10 frames, need at least 16"):
        read_clip(path, IntervalSampler(16, 8))
    _, indices = read_clip(path, IntervalSampler(8, 8))  # fits with a smaller interval, in order
    assert indices == list(range(8)) or indices == list(range(1, 9)) or indices == list(range(2, 10))


def test_backends_other_than_pyav_only_when_installed_and_asked_for(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(8))
    with pytest.raises(DataError, match="unknown video backend 'opencv'"):
        read_frames(path, [0], backend="opencv")
    for backend in ("decord", "torchcodec"):
        try:
            __import__(backend)
        except ImportError:
            with pytest.raises(DataError, match=f"'{backend}' was asked for but is not installed"):
                read_frames(path, [0], backend=backend)
        else:
            theirs = read_frames(path, [1, 6], backend=backend).astype(float)
            assert np.abs(theirs - read_frames(path, [1, 6])).mean() < 3  # same frames, maybe another YUV->RGB
