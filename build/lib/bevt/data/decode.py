"""Decode the frames of a clip in the order a player shows them, seeking only when that is safe.

Frame i of a video is the i-th frame that decoding the whole stream yields: FFmpeg's decoders
return frames in presentation order, the order ffmpeg, ffprobe and players show. Headers are
not trusted (one may claim 444 frames when 68 decode; WebM headers carry no count; partial
downloads end mid-stream), and neither is a timestamp the container did not store.

Two ways to reach frame i:

- *Seeking* (fast), when the container stores a unique presentation timestamp (pts) for every
  packet (mp4, mkv, webm, mov): reading the packets without decoding them (cheap: no pixels are
  made) gives the frame count and every frame's pts; frame i carries the i-th smallest pts. A
  clip seeks to the last keyframe at or before its first frame and decodes forward; from the
  keyframe on, the decoder must yield exactly the index's pts in order, one frame each (never
  "the first pts past" a bound, never packet order). Decoding continues for the stream's
  reorder depth after the last wanted frame, so that a frame presented earlier but decoded
  later would show as a pts out of order. Any disagreement means the stream is not what its
  packets said, and the clip is decoded from the start instead.
- *From the start* (always right), for containers that store no pts (AVI, raw elementary
  streams: FFmpeg derives pts from decode order and picture types, and for the DivX/Xvid
  "packed B-frames" of many AVIs the derived pts are swapped while the images come out right)
  and for packets with missing or repeated pts: the stream is decoded from its first frame and
  frame i is the i-th frame out of the decoder. The frame count of such a file comes from
  decoding it whole once; each process remembers it. One exception keeps the UCF101/HMDB51 era
  fast: MPEG-4 Part 2 in AVI without packed B-frames (no packet holds two pictures), whose
  derived pts FFmpeg gets right, seeks.

When seeking does not deliver a wanted frame the clip is decoded from the start, and when that
shows the packet count was wrong the clip is chosen again with the decoded count, so
`choose_indices` must be a pure function of the frame count (it may be called twice).

Only PyAV is supported: its wheels bundle FFmpeg, so it works on a fresh machine. torchcodec
needs the system's FFmpeg libraries, which the machines bevt is tested on lack, and decord was
never tested; an untested backend is not offered.

Every failure a user can fix by repairing or dropping the file raises `UnreadableSample` with a
short reason ("missing", "empty", "truncated", "undecodable", "too short") that the datasets
record when they skip the sample.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import av
import numpy as np

from bevt.errors import DataError

# Threads per decoder. Parallelism comes from DataLoader workers (one decoder each); FFmpeg's
# default (one thread per core in every worker) oversubscribes the CPU and measured no faster.
DECODER_THREADS = 1

# Containers whose packets carry no stored presentation time (FFmpeg derives one from decode order).
FORMATS_WITHOUT_PTS = {"avi", "h264", "hevc", "m4v", "mpegvideo", "rawvideo"}
# An MPEG-4 Part 2 picture starts with this code; a packet with two is a packed B-frame.
MPEG4_PICTURE_START = b"\x00\x00\x01\xb6"

# Decoded frames held in memory while a from-start decode counts the frames, so the wanted ones
# need no second pass; longer videos are decoded a second time up to the last wanted frame.
KEEP_DECODED_BYTES = 128 * 2**20

# Frame counts found by decoding whole files, per process: (path, size, mtime) -> count.
_DECODED_COUNTS: dict[tuple[str, int, int], int] = {}
_MAX_REMEMBERED = 65536


class UnreadableSample(DataError):
    """A video (or image) that cannot give the requested frames; `reason` starts with its kind."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoIndex:
    """What reading the packets of the first video stream (without decoding) says about it.

    `seekable`: every packet has its own pts, stored by the container (or derived by FFmpeg for
    unpacked MPEG-4 Part 2 in AVI), so `pts` (sorted) names the frames in presentation order
    and clips may seek; then keyframes, sorted by pts, have a seek target
    each: min(pts, dts), because containers seek by either (mp4 by dts, Matroska by pts) and
    landing early only costs a few extra frames. `reorder_depth`: how far a packet's decode
    position is from its presentation position at most (B-frames), i.e. how many frames past
    the last wanted one may still present earlier. `header_frames`: what the container claims
    (0 when unknown), used only to explain truncation in error messages.
    """

    num_packets: int
    seekable: bool
    pts: np.ndarray
    keyframe_pts: np.ndarray
    keyframe_seek: np.ndarray
    reorder_depth: int
    header_frames: int


def check_readable_file(path: str) -> None:
    """Fail fast with a precise reason for the two cheapest problems: missing and zero bytes."""
    if not os.path.exists(path):
        raise UnreadableSample(path, "missing: no such file")
    if os.path.getsize(path) == 0:
        raise UnreadableSample(path, "empty: zero bytes")


def open_video(path: str) -> av.container.InputContainer:
    """The container of `path` with at least one video stream, or `UnreadableSample`."""
    check_readable_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as err:
        raise UnreadableSample(path, f"undecodable: cannot open container ({_ffmpeg_message(err)})") from None
    if not container.streams.video:
        container.close()
        raise UnreadableSample(path, "undecodable: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = DECODER_THREADS
    return container


def _ffmpeg_message(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def index_packets(container, path: str) -> VideoIndex:
    """Read every packet of the first video stream (no decoding)."""
    stream = container.streams.video[0]
    pts, dts, keys = [], [], []
    derived = container.format.name in FORMATS_WITHOUT_PTS
    # Derived pts are right for unpacked MPEG-4 Part 2 in AVI; look for packed pictures.
    trust_derived = container.format.name == "avi" and stream.codec_context.name == "mpeg4"
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            pts.append(packet.pts)
            dts.append(packet.dts)
            keys.append(packet.is_keyframe)
            if trust_derived and bytes(packet).count(MPEG4_PICTURE_START) > 1:
                trust_derived = False
    except av.FFmpegError as err:
        raise UnreadableSample(
            path, f"truncated: stream unreadable after {len(pts)} packets ({_ffmpeg_message(err)})"
        ) from None
    if not pts:
        raise UnreadableSample(path, "undecodable: no video frames")
    header_frames = int(stream.frames or 0)
    seekable = (
        (not derived or trust_derived)
        and all(p is not None for p in pts)
        and len(set(pts)) == len(pts)
    )
    if not seekable:
        empty = np.zeros(0, np.int64)
        return VideoIndex(len(pts), False, empty, empty, empty, 0, header_frames)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    presentation = np.empty(len(pts), np.int64)
    presentation[order] = np.arange(len(pts))  # presentation position of each packet, in decode order
    keyframes = {p: min(p, d if d is not None else p) for p, d, key in zip(pts, dts, keys) if key}
    first = int(min(pts))
    keyframes.setdefault(first, first)  # decoding can always start at the beginning
    keyframe_pts = np.array(sorted(keyframes), dtype=np.int64)
    return VideoIndex(
        num_packets=len(pts),
        seekable=True,
        pts=np.sort(np.asarray(pts, dtype=np.int64)),
        keyframe_pts=keyframe_pts,
        keyframe_seek=np.array([keyframes[k] for k in keyframe_pts], dtype=np.int64),
        reorder_depth=int(np.abs(presentation - np.arange(len(pts))).max()),
        header_frames=header_frames,
    )


def read_clip(path: str, choose_indices) -> tuple[np.ndarray, list[int]]:
    """Count the frames of `path`, let `choose_indices(num_frames)` pick some, decode them.

    `choose_indices` must depend on the count only (it is called again if decoding proves the
    packet count wrong); it may raise `ValueError` when the video is too short for it, which
    becomes a "too short" skip reason. Returns uint8 (T,H,W,3) RGB frames (presentation order
    positions as asked, repeats allowed) and the indices decoded.
    """
    path = str(path)
    with open_video(path) as container:
        index = index_packets(container, path)
        if index.seekable:  # never skipped for what this process remembers: a clip depends on the file only
            indices = _choose(path, choose_indices, index.num_packets)
            frames = _decode_seeking(container, path, index, indices)
            if frames is not None:
                return frames, indices
    # Not seekable, or seeking failed: frame i is the i-th frame decoded from the start.
    return _read_from_start(path, choose_indices, index, _DECODED_COUNTS.get(_file_key(path)))


def _file_key(path: str) -> tuple[str, int, int]:
    status = os.stat(path)
    return os.path.abspath(path), status.st_size, status.st_mtime_ns


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


def _decode_seeking(container, path: str, index: VideoIndex, indices: list[int]) -> np.ndarray | None:
    """Seek to the keyframe at or before the first wanted frame and decode forward. From the
    keyframe on, the decoder must yield exactly the index's pts in order, one frame each; any
    other stamp (missing, out of order, skipped, extra) or a seek that lands on a non-keyframe
    means the stream contradicts its index: None, and the caller decodes from the start."""
    stream = container.streams.video[0]
    wanted = dict.fromkeys(indices)
    keyframe = max(int(np.searchsorted(index.keyframe_pts, index.pts[min(wanted)], side="right")) - 1, 0)
    start = int(index.keyframe_pts[keyframe])
    position = first = int(np.searchsorted(index.pts, start))
    missing, after_last = len(wanted), 0
    try:
        container.seek(int(index.keyframe_seek[keyframe]), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            stamp = frame.pts
            if position == first and stamp is not None and stamp < start:
                continue  # frames before the keyframe (the seek landed early, or open-GOP leading frames)
            if position == len(index.pts) or stamp != index.pts[position]:
                return None  # the decoder's pts are not the presentation times the packets promised
            if position == first and not frame.key_frame and keyframe > 0:
                return None  # the index flagged a frame as keyframe that is not one (some AVI/MP4 muxers)
            if position in wanted and wanted[position] is None:
                wanted[position] = frame.to_ndarray(format="rgb24")
                missing -= 1
            position += 1
            if missing == 0:
                # Every wanted frame is here; decode the reorder depth further to be sure no frame
                # presented earlier is still coming (the pts check above would catch it).
                after_last += 1
                if after_last > index.reorder_depth:
                    break
        else:
            if position != len(index.pts):
                return None  # the stream ended before every frame of the index was decoded
    except av.FFmpegError:
        return None  # decoding from the start says whether the file or the seek is at fault
    if missing:
        return None
    return np.stack([wanted[i] for i in indices])


def _read_from_start(path: str, choose_indices, index: VideoIndex, known: int | None):
    """Frame i = the i-th frame the decoder yields from the start. Without a remembered count
    the whole stream is decoded once to count it (keeping the frames when they are few)."""
    if known is not None:
        indices = _choose(path, choose_indices, known)
        return _decode_positions(path, index, indices, known), indices
    kept, count = _decode_all(path, index)
    if len(_DECODED_COUNTS) >= _MAX_REMEMBERED:
        _DECODED_COUNTS.clear()
    _DECODED_COUNTS[_file_key(path)] = count
    if count == 0:
        raise UnreadableSample(path, _broken_stream_reason(index.header_frames, 0, "no frame decodes"))
    indices = _choose_again(path, choose_indices, index, count)
    if kept is not None:
        return np.stack([kept[i].to_ndarray(format="rgb24") for i in indices]), indices
    return _decode_positions(path, index, indices, count), indices


def _choose_again(path: str, choose_indices, index: VideoIndex, count: int) -> list[int]:
    """`_choose` with the decoded count; a frame asked for beyond it, in a stream whose packets
    promised more, is the mark of a cut-off or damaged file rather than of a short video."""
    try:
        return _choose(path, choose_indices, count)
    except UnreadableSample as err:
        if count < index.num_packets and err.reason.startswith("too short: frame"):
            what = err.reason.removeprefix("too short: ")
            raise UnreadableSample(path, _broken_stream_reason(index.header_frames, count, what)) from None
        raise


def _decode_all(path: str, index: VideoIndex) -> tuple[list | None, int]:
    """Decode the whole stream: (its frames if they fit in KEEP_DECODED_BYTES, else None; count)."""
    kept, held, count = [], 0, 0
    with open_video(path) as container:
        try:
            for frame in container.decode(container.streams.video[0]):
                count += 1
                if kept is not None:
                    held += frame.width * frame.height * 3 // 2
                    kept.append(frame)
                    if held > KEEP_DECODED_BYTES:
                        kept = None  # too long to hold: the wanted frames are decoded again
        except av.FFmpegError as err:
            what = f"decoding failed after {count} frames ({_ffmpeg_message(err)})"
            raise UnreadableSample(path, _broken_stream_reason(index.header_frames, count, what)) from None
    return kept, count


def _decode_positions(path: str, index: VideoIndex, indices: list[int], count: int) -> np.ndarray:
    """Frames at decoder-output positions `indices`, decoding from the start up to the last one."""
    wanted = dict.fromkeys(indices)
    last = max(indices)
    with open_video(path) as container:
        position = -1
        try:
            for position, frame in enumerate(container.decode(container.streams.video[0])):
                if position in wanted:
                    wanted[position] = frame.to_ndarray(format="rgb24")
                if position == last:
                    break
        except av.FFmpegError as err:
            what = f"decoding failed after {position + 1} frames ({_ffmpeg_message(err)})"
            raise UnreadableSample(path, _broken_stream_reason(index.header_frames, count, what)) from None
    if wanted[last] is None:
        what = f"frame {last} never decoded"
        raise UnreadableSample(path, _broken_stream_reason(index.header_frames, position + 1, what))
    return np.stack([wanted[i] for i in indices])


def _broken_stream_reason(header_frames: int, decoded: int, what: str) -> str:
    """A header promising more frames than the file holds is the mark of a cut-off download."""
    if header_frames > decoded:
        return f"truncated: header says {header_frames} frames, {decoded} decode; {what}"
    return f"undecodable: {what}"


def forget(path: str) -> None:
    """Drop the frame count this process remembers for `path`, so the next read finds it afresh."""
    _DECODED_COUNTS.pop(_file_key(path), None)


@dataclass(frozen=True)
class StreamScan:
    """A whole-stream decode, as a player shows it: per frame, its pts (None when the decoder
    gave none) and a hash of its RGB pixels (to compare a reader's frames with, cheaply)."""

    pts: list
    hashes: list[bytes]

    @property
    def num_frames(self) -> int:
        return len(self.hashes)


def frame_hash(rgb: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=12).digest()


def scan_video(path: str) -> StreamScan:
    """Decode every frame of `path` once; `UnreadableSample` if any part of the stream fails."""
    path = str(path)
    with open_video(path) as container:
        index = index_packets(container, path)  # a cut-off file is "truncated", as for the reader
    pts, hashes = [], []
    with open_video(path) as container:
        try:
            for frame in container.decode(container.streams.video[0]):
                pts.append(frame.pts)
                hashes.append(frame_hash(frame.to_ndarray(format="rgb24")))
        except av.FFmpegError as err:
            raise UnreadableSample(path, f"undecodable: decoding the whole stream failed after {len(hashes)} of "
                                         f"{index.num_packets} frames ({_ffmpeg_message(err)})") from None
    if not hashes:
        raise UnreadableSample(path, "undecodable: no frame decodes")
    return StreamScan(pts, hashes)
