"""Clip decoding, side by side: bevt's reader, decode-every-frame-then-index, and (optionally)
the reader of another bevt checkout, on three workloads. Every reader's clips are compared with
a whole-file decode; a reader that returns other frames is reported with its error count.

- paper: 16-frame clips at interval 8 from 10-second 320x240 30-fps H.264 mp4 videos (libx264
  defaults: B-frames, one keyframe every 250 frames unless --gop says otherwise);
- avi: the same clips from MPEG-4 Part 2 AVIs with B-frames (UCF101 / HMDB51's codec; AVI stores
  no timestamps, so bevt decodes them from the start). bevt's per-process count of such a file is
  cleared before every clip, as for a DataLoader worker that meets each file once per epoch;
- demo: the demo's 64-px synthetic videos (8 frames, H.264) read with the tiny recipes' 8 x 2
  clip sampler.

All readers use the same decoder threading (one thread: DataLoader workers give the
parallelism). Last, the full pretraining pipeline per sample (decode + short-side resize + crop
+ flip + normalised model view + Lanczos tokenizer view), in one process with one thread.

    .venv/bin/python benchmarks/decode.py [--videos 4 --clips 48 --rounds 3 --gop 250] [--baseline-src OTHER/src]

`--baseline-src` names the `src` folder of another checkout (e.g. a `git worktree` of an older
commit) whose `bevt/data/decode.py` is measured as a third reader.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from bevt.data import decode
from bevt.data.datasets import load_annotations
from bevt.data.sampling import IntervalSampler
from bevt.data.synthetic import make_synthetic_benchmark
from bevt.data.transforms import PretrainTransform, seeded


def write_test_video(path: Path, seed: int, codec: str, options: dict, seconds: int = 10, fps: int = 30) -> None:
    """A moving, textured 320x240 scene (enough detail that frames are not nearly free to decode)."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    texture = np.asarray(
        torch.nn.functional.avg_pool2d(torch.from_numpy(texture).permute(2, 0, 1).float()[None], 5, 1, 2)[0]
        .permute(1, 2, 0).byte()
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = options
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
        stream.thread_count = decode.DECODER_THREADS
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack([frames[i] for i in choose(len(frames))])


def bevt_reader(cold: bool):
    def read(path: Path, choose) -> np.ndarray:
        if cold:
            decode._DECODED_COUNTS.clear()
        return decode.read_clip(str(path), choose)[0]

    return read


def other_reader(src: str):
    """`read_clip` of another checkout's decode.py, loaded under its own module name."""
    spec = importlib.util.spec_from_file_location("baseline_decode", Path(src) / "bevt" / "data" / "decode.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return lambda path, choose: module.read_clip(str(path), choose)[0]


def measure(read, videos: list[Path], clips: int, sampler, reference: dict) -> tuple[float, int, int]:
    """(clips/s, clips that failed, clips with other frames than the whole-file decode)."""
    failed = wrong = 0
    started = time.perf_counter()
    for k in range(clips):
        path = videos[k % len(videos)]
        choose = lambda n: sampler(n, torch.Generator().manual_seed(k))  # noqa: E731 (pure in n)
        try:
            frames = read(path, choose)
        except decode.UnreadableSample:
            failed += 1
            continue
        wrong += not np.array_equal(frames, np.stack([reference[path][i] for i in choose(len(reference[path]))]))
    return clips / (time.perf_counter() - started), failed, wrong


def whole_file(paths: list[Path]) -> dict:
    with_frames = {}
    for path in paths:
        with av.open(str(path)) as container:
            with_frames[path] = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return with_frames


def report(title: str, readers: dict, videos: list[Path], clips: int, sampler, rounds: int) -> None:
    """Each reader's median speed over `rounds` rounds, the readers taking turns within a round
    (a shared machine's load then weighs on all of them alike); failures and wrong frames summed."""
    reference = whole_file(videos)
    print(title)
    runs = {name: [] for name in readers}
    for _ in range(rounds):
        for name, read in readers.items():
            runs[name].append(measure(read, videos, clips, sampler, reference))
    results = {name: (statistics.median(r[0] for r in found), sum(r[1] for r in found), sum(r[2] for r in found))
               for name, found in runs.items()}
    base = results["decode every frame, then index"][0]
    for name, (speed, failed, wrong) in results.items():
        print(f"  {name:<34}: {speed:8.1f} clips/s  ({speed / base:5.2f}x)  "
              f"failed {failed:3d}  wrong frames {wrong:3d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips", type=int, default=48, help="clips per measurement")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the H.264 videos (x264's default)")
    parser.add_argument("--size", type=int, default=224, help="crop size of the pipeline measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per reader (the median is shown)")
    parser.add_argument("--baseline-src", help="src folder of another bevt checkout whose reader is measured too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mp4s = [folder / f"video{i}.mp4" for i in range(args.videos)]
        avis = [folder / f"video{i}.avi" for i in range(args.videos)]
        for i, (mp4, avi) in enumerate(zip(mp4s, avis)):
            write_test_video(mp4, i, "libx264", {"g": str(args.gop), "preset": "veryfast"})
            write_test_video(avi, i, "mpeg4", {"g": "12", "bf": "2", "qscale": "4"})
        bench = make_synthetic_benchmark(str(folder / "synthetic"), size=64, frames=8, images_per_class=1,
                                         val_images_per_class=1, videos_per_class=4, val_videos_per_class=1)
        demo = [Path(s.path) for s in load_annotations(bench["spatial_train"]).samples]

        def readers(cold: bool) -> dict:
            found = {"decode every frame, then index": decode_all_then_index, "bevt": bevt_reader(cold)}
            if args.baseline_src:
                found[f"other checkout ({args.baseline_src})"] = other_reader(args.baseline_src)
            return found

        per_round = f"{args.clips} clips per round, median of {args.rounds} rounds"
        report(f"paper: 16x8 clips, 10 s 320x240 30 fps H.264 mp4 (keyframe every {args.gop}), {per_round}:",
               readers(cold=False), mp4s, args.clips, IntervalSampler(16, 8), args.rounds)
        report(f"avi: 16x8 clips, 10 s 320x240 30 fps MPEG-4 Part 2 AVI with B-frames, each file met for the "
               f"first time, {per_round}:", readers(cold=True), avis, args.clips, IntervalSampler(16, 8), args.rounds)
        report(f"demo: 8x2 clips of {len(demo)} 64-px 8-frame synthetic H.264 videos, {4 * args.clips} clips per "
               f"round, median of {args.rounds} rounds:",
               readers(cold=False), demo, 4 * args.clips, IntervalSampler(8, 2), args.rounds)

        transform = PretrainTransform(args.size)
        sampler = IntervalSampler(16, 8)
        started = time.perf_counter()
        for k in range(args.clips):
            choose = lambda n: sampler(n, torch.Generator().manual_seed(k))  # noqa: E731 (pure in n)
            frames, _ = decode.read_clip(str(mp4s[k % len(mp4s)]), choose)
            with seeded(k):
                views = transform(frames)
        pipeline = args.clips / (time.perf_counter() - started)
        print(f"full pretraining pipeline (decode + {args.size}px views + {views['tok'].shape[-1]}px tokenizer view), "
              f"1 process, 1 torch thread: {pipeline:.1f} clips/s per core")


if __name__ == "__main__":
    main()
