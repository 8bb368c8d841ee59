"""Decode only the frames a clip needs, counting frames by demuxing instead of trusting headers.

Real videos lie: a header may claim 444 frames when 68 decode, WebM headers carry no count at
all, and partial downloads end mid-stream. So a video is first *indexed* by reading its packets
without decoding them (cheap: no pixels are made), which gives the true frame count and the
presentation timestamp (pts) of every frame. A clip is then decoded by seeking to the last
keyframe before its first frame and decoding forward until its last frame, converting only the
needed frames to RGB.

Every failure a user can fix by repairing or dropping the file raises `UnreadableSample` with a
short reason ("missing", "empty", "truncated", "undecodable", "too short") that the datasets
record when they skip the sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np

from bevt.errors import DataError

BACKENDS = ("pyav", "decord", "torchcodec")


class UnreadableSample(DataError):
    """A video (or image) that cannot give the requested frames; `reason` starts with its kind."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoIndex:
    """Where every frame of the first video stream is, found by demuxing.

    `pts[i]` is the presentation timestamp of frame i (in display order); `keyframe_pts` are the
    timestamps decoding can start from. `header_frames` is what the container claims (0 when
    unknown), kept only to explain truncation in error messages.
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray
    header_frames: int

    @property
    def num_frames(self) -> int:
        return len(self.pts)


def check_readable_file(path: str) -> None:
    """Fail fast with a precise reason for the two cheapest problems: missing and zero bytes."""
    if not os.path.exists(path):
        raise UnreadableSample(path, "missing: no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableSample(path, "empty: zero bytes")


def _open(path: str) -> av.container.InputContainer:
    check_readable_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as err:
        raise UnreadableSample(path, f"undecodable: cannot open container ({_ffmpeg_message(err)})") from None
    if not container.streams.video:
        container.close()
        raise UnreadableSample(path, "undecodable: no video stream")
    return container


def _ffmpeg_message(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _index_stream(container, stream, path: str) -> VideoIndex:
    pts, keyframes = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                continue
            pts.append(stamp)
            if packet.is_keyframe:
                keyframes.append(stamp)
    except av.FFmpegError as err:
        raise UnreadableSample(
            path, f"truncated: stream unreadable after {len(pts)} packets ({_ffmpeg_message(err)})"
        ) from None
    if not pts:
        raise UnreadableSample(path, "undecodable: no video frames")
    if not keyframes:  # some muxers (AVI with packed B-frames) do not flag keyframes
        keyframes = [min(pts)]
    return VideoIndex(
        pts=np.unique(np.asarray(pts, dtype=np.int64)),
        keyframe_pts=np.unique(np.asarray(keyframes, dtype=np.int64)),
        header_frames=int(stream.frames or 0),
    )


def index_video(path: str) -> VideoIndex:
    """Count the frames of `path` by reading its packets (no decoding)."""
    with _open(path) as container:
        return _index_stream(container, container.streams.video[0], str(path))


def read_frames(path: str, frame_indices, index: VideoIndex | None = None, backend: str = "pyav") -> np.ndarray:
    """Frames `frame_indices` (display order, repeats allowed) of `path` as uint8 (T,H,W,3) RGB."""
    if backend == "pyav":
        return _read_frames_pyav(str(path), list(frame_indices), index)
    if backend == "decord":
        return _read_frames_decord(str(path), list(frame_indices))
    if backend == "torchcodec":
        return _read_frames_torchcodec(str(path), list(frame_indices))
    raise DataError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def read_clip(path: str, choose_indices, backend: str = "pyav") -> tuple[np.ndarray, list[int]]:
    """Index `path`, let `choose_indices(num_frames)` pick frames, decode them.

    `choose_indices` may raise `ValueError` when the video is too short for it; that becomes a
    "too short" skip reason. Returns the frames (T,H,W,3) and the indices that were decoded.
    """
    path = str(path)
    if backend != "pyav":
        num_frames = count_frames(path, backend)
        indices = _choose(path, choose_indices, num_frames)
        return read_frames(path, indices, backend=backend), indices
    with _open(path) as container:
        index = _index_stream(container, container.streams.video[0], path)
        indices = _choose(path, choose_indices, index.num_frames)
        return _decode_indices(container, path, indices, index), indices


def count_frames(path: str, backend: str = "pyav") -> int:
    """The number of frames a backend can deliver (for pyav: demuxed packets, not the header)."""
    if backend == "pyav":
        return index_video(path).num_frames
    check_readable_file(path)
    if backend == "decord":
        return len(_decord_reader(path))
    return _torchcodec_decoder(path).metadata.num_frames


def _choose(path: str, choose_indices, num_frames: int) -> list[int]:
    try:
        return [int(i) for i in choose_indices(num_frames)]
    except ValueError as err:
        raise UnreadableSample(path, f"too short: {err}") from None


def _read_frames_pyav(path: str, frame_indices: list[int], index: VideoIndex | None) -> np.ndarray:
    with _open(path) as container:
        if index is None:
            index = _index_stream(container, container.streams.video[0], path)
        return _decode_indices(container, path, frame_indices, index)


def _decode_indices(container, path: str, frame_indices: list[int], index: VideoIndex) -> np.ndarray:
    """Seek to the keyframe before the first wanted frame, decode forward, stop after the last."""
    if not frame_indices:
        raise ValueError("frame_indices is empty")
    if min(frame_indices) < 0 or max(frame_indices) >= index.num_frames:
        raise UnreadableSample(
            path, f"too short: frame {max(frame_indices)} requested, video has {index.num_frames} frames"
        )
    wanted = {int(index.pts[i]): None for i in frame_indices}
    first, last = min(wanted), max(wanted)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    before_first = np.searchsorted(index.keyframe_pts, first, side="right") - 1
    start = index.keyframe_pts[max(before_first, 0)]
    found = _decode_range(container, stream, path, int(start), first, last, wanted, index)
    if found < len(wanted) and start != index.keyframe_pts[0]:
        # A container whose seek landed after the wanted frame: decode from the very start.
        found = _decode_range(container, stream, path, int(index.keyframe_pts[0]), first, last, wanted, index)
    if found < len(wanted):
        missing = sorted(stamp for stamp, frame in wanted.items() if frame is None)
        raise UnreadableSample(path, f"undecodable: frames with pts {missing[:3]} never decoded")
    return np.stack([wanted[int(index.pts[i])] for i in frame_indices])


def _decode_range(container, stream, path, start_pts, first, last, wanted, index) -> int:
    """Decode from the keyframe at `start_pts` up to pts `last`; fill `wanted`; return how many."""
    container.seek(start_pts, stream=stream, backward=True, any_frame=False)
    found = sum(frame is not None for frame in wanted.values())
    decoded = 0
    try:
        for frame in container.decode(stream):
            decoded += 1
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp in wanted and wanted[stamp] is None:
                wanted[stamp] = frame.to_ndarray(format="rgb24")
                found += 1
            if found == len(wanted) or (stamp is not None and stamp >= last):
                break
    except av.FFmpegError as err:
        kind = "truncated" if index.header_frames > index.num_frames else "undecodable"
        detail = f"header says {index.header_frames} frames, file holds {index.num_frames}; " if (
            kind == "truncated"
        ) else ""
        raise UnreadableSample(
            path, f"{kind}: {detail}decoding failed after {decoded} frames ({_ffmpeg_message(err)})"
        ) from None
    return found


def _decord_reader(path: str):
    try:
        import decord
    except ImportError:
        raise DataError("video backend 'decord' was asked for but is not installed (pip install decord)") from None
    try:
        return decord.VideoReader(path, num_threads=1)
    except Exception as err:  # decord raises its own DECORDError for any unreadable input
        raise UnreadableSample(path, f"undecodable: {err}") from None


def _read_frames_decord(path: str, frame_indices: list[int]) -> np.ndarray:
    check_readable_file(path)
    return _decord_reader(path).get_batch(frame_indices).asnumpy()


def _torchcodec_decoder(path: str):
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        raise DataError(
            "video backend 'torchcodec' was asked for but is not installed (pip install torchcodec)"
        ) from None
    try:
        return VideoDecoder(path)  # the default "exact" mode scans the file instead of trusting the header
    except Exception as err:  # torchcodec raises RuntimeError/ValueError for unreadable input
        raise UnreadableSample(path, f"undecodable: {err}") from None


def _read_frames_torchcodec(path: str, frame_indices: list[int]) -> np.ndarray:
    check_readable_file(path)
    frames = _torchcodec_decoder(path).get_frames_at(indices=frame_indices).data  # (T,3,H,W)
    return frames.permute(0, 2, 3, 1).numpy()
