"""Clip decoding: bevt's seek-and-stop reader against decode-every-frame-then-index, side by side.

Workload of the paper's pretraining: 16-frame clips at frame interval 8 from 10-second,
320x240, 30-fps H.264 videos (generated here in a temporary folder; libx264 defaults, so one
keyframe every 250 frames unless the content asks for more). Both readers use the same
decoder threading (one thread: DataLoader workers give the parallelism) and return the same
uint8 (16,240,320,3) frames (checked).
Also shown: what counting frames by demuxing (instead of trusting the header) costs per clip.
Then the full pretraining pipeline per sample (decode + short-side resize + crop + flip +
normalised model view + Lanczos tokenizer view), in one process with one thread: clips/s per core.

    .venv/bin/python benchmarks/decode.py [--videos 4 --clips 48 --gop 250]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from bevt.data.decode import DECODER_THREADS, index_video, read_clip
from bevt.data.sampling import IntervalSampler
from bevt.data.transforms import PretrainTransform, seeded


def write_test_video(path: Path, seed: int, gop: int, seconds: int = 10, fps: int = 30) -> None:
    """A moving, textured 320x240 scene (enough detail that frames are not nearly free to decode)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    texture = np.asarray(
        torch.nn.functional.avg_pool2d(torch.from_numpy(texture).permute(2, 0, 1).float()[None], 5, 1, 2)[0]
        .permute(1, 2, 0).byte()
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"g": str(gop), "preset": "veryfast"}
        for t in range(seconds * fps):
            top, left = int(120 + 100 * np.sin(t / 40)), int(160 + 150 * np.cos(t / 55))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[top : top + 240, left : left + 320]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_all_then_index(path: Path, choose) -> np.ndarray:
    """The usual baseline: decode every frame to RGB, then pick the clip's frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = DECODER_THREADS
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack([frames[i] for i in choose(len(frames))])


def bevt_reader(path: Path, choose) -> np.ndarray:
    return read_clip(str(path), choose)[0]


def clips_per_second(read, videos: list[Path], clips: int, sampler: IntervalSampler) -> float:
    started = time.perf_counter()
    for k in range(clips):
        generator = torch.Generator().manual_seed(k)
        read(videos[k % len(videos)], lambda n: sampler(n, generator))
    return clips / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=48, help="clips per measurement")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the test videos (x264's default)")
    parser.add_argument("--size", type=int, default=224, help="crop size of the pipeline measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sampler = IntervalSampler(16, 8)
    with tempfile.TemporaryDirectory() as folder:
        videos = [Path(folder) / f"video{i}.mp4" for i in range(args.videos)]
        for i, path in enumerate(videos):
            write_test_video(path, i, args.gop)
        check = torch.Generator().manual_seed(0)
        indices = sampler(300, check)
        reference = decode_all_then_index(videos[0], lambda n: indices)
        assert np.array_equal(bevt_reader(videos[0], lambda n: indices), reference), "the two readers disagree"

        baseline = clips_per_second(decode_all_then_index, videos, args.clips, sampler)
        ours = clips_per_second(bevt_reader, videos, args.clips, sampler)
        print(f"16x8 clips from 10 s 320x240 30 fps H.264 (keyframe every {args.gop} frames), {args.clips} clips each:")
        print(f"  decode every frame, then index : {baseline:7.1f} clips/s")
        print(f"  bevt (seek, decode, stop)      : {ours:7.1f} clips/s")
        print(f"  ratio                          : {ours / baseline:7.2f}x")
        started = time.perf_counter()
        for k in range(args.clips):
            index_video(str(videos[k % len(videos)]))
        index_ms = 1000 * (time.perf_counter() - started) / args.clips
        print(f"  of bevt's time per clip, counting the frames by demuxing: {index_ms:.1f} ms of {1000 / ours:.1f} ms")

        transform = PretrainTransform(args.size)
        started = time.perf_counter()
        for k in range(args.clips):
            generator = torch.Generator().manual_seed(k)
            frames, _ = read_clip(str(videos[k % len(videos)]), lambda n: sampler(n, generator))
            with seeded(k):
                views = transform(frames)
        pipeline = args.clips / (time.perf_counter() - started)
        print(f"full pretraining pipeline (decode + {args.size}px views + {views['tok'].shape[-1]}px tokenizer view), "
              f"1 process, 1 torch thread: {pipeline:.1f} clips/s per core")


if __name__ == "__main__":
    main()
