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

# Threads per decoder. Parallelism comes from DataLoader workers (one decoder each); FFmpeg's
# default (one thread per core in every worker) oversubscribes the CPU and measured no faster.
DECODER_THREADS = 1


class UnreadableSample(DataError):
    """A video (or image) that cannot give the requested frames; `reason` starts with its kind."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoIndex:
    """Where every frame of the first video stream is, found by demuxing.

    `pts[i]` is the presentation timestamp of frame i (in display order). Keyframes, sorted by
    pts, have a seek target each: min(pts, dts), because containers seek by either (mp4 and
    AVI by dts, Matroska by pts) and landing early only costs a few extra frames.
    `header_frames` is what the container claims (0 when unknown), used only to explain
    truncation in error messages.
    """

    pts: np.ndarray
    keyframe_pts: np.ndarray
    keyframe_seek: np.ndarray
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
    pts, keyframes = [], {}
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                continue
            pts.append(stamp)
            if packet.is_keyframe:
                keyframes[stamp] = min(stamp, packet.dts if packet.dts is not None else stamp)
    except av.FFmpegError as err:
        raise UnreadableSample(
            path, f"truncated: stream unreadable after {len(pts)} packets ({_ffmpeg_message(err)})"
        ) from None
    if not pts:
        raise UnreadableSample(path, "undecodable: no video frames")
    first = min(pts)
    keyframes.setdefault(first, first)  # decoding can always start at the beginning
    keyframe_pts = np.array(sorted(keyframes), dtype=np.int64)
    return VideoIndex(
        pts=np.unique(np.asarray(pts, dtype=np.int64)),
        keyframe_pts=keyframe_pts,
        keyframe_seek=np.array([keyframes[k] for k in keyframe_pts], dtype=np.int64),
        header_frames=int(stream.frames or 0),
    )


def index_video(path: str) -> VideoIndex:
    """Count the frames of `path` by reading its packets (no decoding)."""
    with _open(path) as container:
        return _index_stream(container, container.streams.video[0], str(path))


def read_clip(path: str, choose_indices, backend: str = "pyav") -> tuple[np.ndarray, list[int]]:
    """Count the frames of `path`, let `choose_indices(num_frames)` pick some, decode them.

    `choose_indices` may raise `ValueError` when the video is too short for it; that becomes a
    "too short" skip reason. Returns uint8 (T,H,W,3) RGB frames and the indices decoded.
    """
    path = str(path)
    if backend == "pyav":
        with _open(path) as container:
            index = _index_stream(container, container.streams.video[0], path)
            indices = _choose(path, choose_indices, index.num_frames)
            return _decode_indices(container, path, indices, index), indices
    num_frames, read = _open_other_backend(path, backend)
    indices = _choose(path, choose_indices, num_frames)
    try:
        return read(indices), indices
    except Exception as err:  # decord and torchcodec raise their own error types for bad streams
        raise UnreadableSample(path, f"undecodable: {err}") from None


def read_frames(path: str, frame_indices, backend: str = "pyav") -> np.ndarray:
    """Frames `frame_indices` (display order, repeats allowed) of `path` as uint8 (T,H,W,3) RGB."""
    wanted = [int(i) for i in frame_indices]
    return read_clip(path, lambda num_frames: wanted, backend)[0]


def _choose(path: str, choose_indices, num_frames: int) -> list[int]:
    try:
        indices = [int(i) for i in choose_indices(num_frames)]
    except ValueError as err:
        raise UnreadableSample(path, f"too short: {err}") from None
    if not indices:
        raise ValueError("no frame indices chosen")
    if min(indices) < 0 or max(indices) >= num_frames:
        raise UnreadableSample(path, f"too short: frame {max(indices)} requested, video has {num_frames} frames")
    return indices


def _decode_indices(container, path: str, frame_indices: list[int], index: VideoIndex) -> np.ndarray:
    """Seek to the keyframe before the first wanted frame, decode forward, stop after the last."""
    wanted = {int(index.pts[i]): None for i in frame_indices}
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = DECODER_THREADS
    keyframe = max(int(np.searchsorted(index.keyframe_pts, min(wanted), side="right")) - 1, 0)
    if not _decode_range(container, stream, path, int(index.keyframe_seek[keyframe]), wanted, index, keyframe == 0):
        # The seek landed on a frame that is not really a keyframe (AVI indexes flag some P-frames),
        # or after a wanted frame: decode from the very start instead.
        _decode_range(container, stream, path, int(index.keyframe_seek[0]), wanted, index, from_start=True)
    missing = sorted(stamp for stamp, frame in wanted.items() if frame is None)
    if missing:
        raise UnreadableSample(path, _broken_stream_reason(index, f"frames with pts {missing[:3]} never decoded"))
    return np.stack([wanted[int(index.pts[i])] for i in frame_indices])


def _decode_range(
    container, stream, path: str, seek_to: int, wanted: dict, index: VideoIndex, from_start: bool
) -> bool:
    """Decode from the keyframe at or before `seek_to` up to the last wanted pts, filling
    `wanted`. False when the seek point proved unusable (caller restarts from the start)."""
    container.seek(seek_to, stream=stream, backward=True, any_frame=False)
    last = max(wanted)
    decoded = 0
    try:
        for frame in container.decode(stream):
            if decoded == 0 and not from_start and not frame.key_frame:
                return False
            decoded += 1
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp in wanted and wanted[stamp] is None:
                wanted[stamp] = frame.to_ndarray(format="rgb24")
            if stamp is not None and stamp >= last:
                break
    except av.FFmpegError as err:
        raise UnreadableSample(
            path, _broken_stream_reason(index, f"decoding failed after {decoded} frames ({_ffmpeg_message(err)})")
        ) from None
    return from_start or all(frame is not None for frame in wanted.values())


def _broken_stream_reason(index: VideoIndex, what: str) -> str:
    """A header promising more frames than the file holds is the mark of a cut-off download."""
    if index.header_frames > index.num_frames:
        return f"truncated: header says {index.header_frames} frames, file holds {index.num_frames}; {what}"
    return f"undecodable: {what}"


def _open_other_backend(path: str, backend: str):
    """(frame count, read(indices) -> uint8 (T,H,W,3)) from decord or torchcodec, which both
    count frames by scanning the file rather than by trusting the header."""
    if backend not in BACKENDS:
        raise DataError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    check_readable_file(path)
    try:
        if backend == "decord":
            import decord
        else:
            from torchcodec.decoders import VideoDecoder
    except ImportError:
        raise DataError(
            f"video backend {backend!r} was asked for but is not installed (pip install {backend})"
        ) from None
    try:
        if backend == "decord":
            reader = decord.VideoReader(path, num_threads=DECODER_THREADS)
            return len(reader), lambda indices: reader.get_batch(indices).asnumpy()
        decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=DECODER_THREADS, seek_mode="exact")
        return decoder.metadata.num_frames, lambda indices: decoder.get_frames_at(indices).data.numpy()
    except Exception as err:  # both raise their own error types for unreadable input
        raise UnreadableSample(path, f"undecodable: {err}") from None
