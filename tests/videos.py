"""Test videos whose frames show their own index, in the encodings real datasets come in.

Each frame draws its index as 8 black/white bars (one bit each, 8 px wide), which survives any
lossy codec, so a frame shown out of place is named by `frame_number`. Writers cover what the
reader must get right: B-frames in AVI (MPEG-4 Part 2, the UCF101/HMDB51 codec) and in mp4
(H.264), DivX/Xvid-style packed B-frames, variable frame rate, no stored timestamps at all,
and repeated timestamps.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from bevt.data.decode import read_clip

WIDTH, HEIGHT = 64, 48


def numbered_frame(index: int) -> np.ndarray:
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(8):
        if (index >> bit) & 1:
            frame[:, 8 * bit : 8 * bit + 8] = 255
    return frame


def frame_number(frame: np.ndarray) -> int:
    """The index a `numbered_frame` shows (read from the centre column of each bar)."""
    return sum(1 << bit for bit in range(8) if frame[:, 8 * bit + 4].mean() > 127)


def read_frames(path, frame_indices) -> np.ndarray:
    """Frames `frame_indices` (presentation order, repeats allowed) of `path`."""
    wanted = [int(i) for i in frame_indices]
    return read_clip(str(path), lambda num_frames: wanted)[0]


def decode_everything(path) -> list[np.ndarray]:
    """What a player shows: every frame of a plain decode of the whole stream, in output order."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def write_video(path, count: int, codec: str, options: dict | None = None, fmt: str | None = None,
                pts: list[int] | None = None, time_base: Fraction | None = None,
                container_options: dict | None = None) -> str:
    """`count` numbered frames; `pts`/`time_base` give each frame its own time (variable rate)."""
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        stream.options = options or {}
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def mpeg4_packets(count: int, b_frames: int = 2, gop: int = 12) -> list[tuple[bytes, bool]]:
    """(bytes, keyframe) of MPEG-4 Part 2 packets in decode order."""
    codec = av.CodecContext.create("mpeg4", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, 25), 25
    codec.options = {"bf": str(b_frames), "g": str(gop)}
    packets = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(numbered_frame(i), format="rgb24")
        frame.pts = i
        packets += [(bytes(p), p.is_keyframe) for p in codec.encode(frame)]
    packets += [(bytes(p), p.is_keyframe) for p in codec.encode(None)]
    return packets


VOP_START = b"\x00\x00\x01\xb6"
# A "not coded" P-VOP: the placeholder a packed stream puts where the B-frame's own chunk was.
N_VOP = VOP_START + b"\x50\x00\x7f"
# User data that DivX 5 writes into the sequence header; the final "p" means "packed bitstream".
DIVX_PACKED = b"\x00\x00\x01\xb2DivX503b1393p"


def _vop_type(data: bytes) -> str:
    return "IPBS"[data[data.find(VOP_START) + 4] >> 6]


def write_packed_avi(path, count: int) -> str:
    """An AVI as DivX 5 / Xvid wrote them: each B-frame glued to the reference frame before it in
    one chunk, an N-VOP placeholder after, one chunk per frame time, no timestamps stored."""
    packets = mpeg4_packets(count)
    chunks = []
    i = 0
    while i < len(packets):
        data, key = packets[i]
        if key:
            at = data.find(VOP_START)
            data = data[:at] + DIVX_PACKED + data[at:]
        bs = []
        while i + 1 + len(bs) < len(packets) and _vop_type(packets[i + 1 + len(bs)][0]) == "B":
            bs.append(packets[i + 1 + len(bs)][0])
        if bs:
            chunks.append((data + bs[0], key))
            chunks += [(b, False) for b in bs[1:]]
            chunks.append((N_VOP, False))
        else:
            chunks.append((data, key))
        i += 1 + len(bs)
    return _mux_mpeg4(path, chunks)


def write_repeated_pts_mkv(path, count: int) -> str:
    """Intra-only MPEG-4 in Matroska where every fifth frame repeats its predecessor's pts."""
    codec = av.CodecContext.create("mpeg4", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, 25), 25
    codec.options = {"g": "1"}
    payloads = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(numbered_frame(i), format="rgb24")
        frame.pts = i
        payloads += [bytes(p) for p in codec.encode(frame)]
    payloads += [bytes(p) for p in codec.encode(None)]
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stamp = 0
        for i, data in enumerate(payloads):
            stamp += 0 if i % 5 == 4 else 1
            packet = av.Packet(data)
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, 25), stamp, stamp
            packet.is_keyframe = True
            container.mux(packet)
    return str(path)


def write_corrupt_avi(path, count: int, broken: int) -> str:
    """MPEG-4 Part 2 AVI (keyframe every 30 frames) whose packet `broken` is random bytes: the
    decoder fails there, while clips before it decode fine."""
    packets = mpeg4_packets(count, b_frames=0, gop=30)
    garbage = np.random.default_rng(0).integers(0, 256, len(packets[broken][0]), dtype=np.uint8).tobytes()
    packets[broken] = (garbage, packets[broken][1])
    return _mux_mpeg4(path, packets)


def _mux_mpeg4(path, packets) -> str:
    """Write (bytes, is_keyframe) MPEG-4 packets into an AVI at 25 fps, one frame per packet."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for t, (data, key) in enumerate(packets):
            packet = av.Packet(data)
            packet.stream, packet.time_base, packet.dts, packet.pts = stream, Fraction(1, 25), t, t
            packet.is_keyframe = key
            container.mux(packet)
    return str(path)
