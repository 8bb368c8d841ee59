"""`bevt synth`: the built-in benchmark, written as real H.264 mp4 files and PNG images.

Three parts, all drawn deterministically from (seed, part, split, index):

- images: class folders standing in for ImageNet. Eight appearance classes, each a shape with
  its own colour and texture, at a random position, angle and size on a random background.
- spatial (like Kinetics): one object of an appearance class moves and turns at random; the
  class is *what* is in the clip, so one frame is enough.
- temporal (like Something-Something): one pale object of random shape and hue slides along a
  row of a dark wrap-around (torus) frame. A label-independent *base* sequence of frames is
  drawn first; the class only decides the *order* in which its frames are shown: moving right
  (identity), moving left (reversed), right-then-back, left-then-back, right-left-right,
  left-right-left. Every clip is therefore a permutation of its base frames, so the multiset of
  frames (a shuffled clip) is label-independent by construction; and since the start position
  and angle are uniform on the torus, every frame position has the same distribution, so one
  frame at any position carries no label information either. The temporal videos are all-intra H.264 (every frame a keyframe),
  so decoding keeps that property exactly: a decoded frame depends only on its own content.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import av
import numpy as np
from PIL import Image

from bevt.errors import DataError

# (class name, shape, hue, texture): the appearance classes of the image set and spatial task.
APPEARANCE_CLASSES = (
    ("00_red_disc", "disc", 0.00, "solid"),
    ("01_orange_cross", "cross", 0.08, "solid"),
    ("02_yellow_triangle", "triangle", 0.16, "stripes"),
    ("03_green_square", "square", 0.33, "checker"),
    ("04_cyan_ring", "ring", 0.50, "solid"),
    ("05_blue_diamond", "diamond", 0.62, "stripes"),
    ("06_purple_square", "square", 0.76, "solid"),
    ("07_pink_triangle", "triangle", 0.90, "checker"),
)
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("solid", "stripes", "checker")

# (class name, SSv2-style template): the temporal task's classes, in label order.
TEMPORAL_CLASSES = (
    ("moving_right", "Moving [something] to the right"),
    ("moving_left", "Moving [something] to the left"),
    ("right_then_back", "Moving [something] right and back"),
    ("left_then_back", "Moving [something] left and back"),
    ("right_left_right", "Moving [something] right, left and right again"),
    ("left_right_left", "Moving [something] left, right and left again"),
)

FPS = 8
# the temporal task's backgrounds: value <= 0.24 against objects of value >= 0.75
TEMPORAL_BACKGROUND_DIMMING = 0.4
_PARTS = {"images": 0, "spatial": 1, "temporal": 2}
_SPLITS = {"train": 0, "val": 1}


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectLook:
    shape: str
    hue: float
    saturation: float
    value: float
    texture: str
    radius: float  # pixels
    stripe_period: float  # pixels


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape of size `r` centred at u = v = 0."""
    if shape == "disc":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(abs(u), abs(v)) - 0.8 * r
    if shape == "diamond":
        return (abs(u) + abs(v) - 1.1 * r) / np.sqrt(2)
    if shape == "triangle":  # equilateral, pointing up in object coordinates
        return np.maximum(abs(u) * np.sqrt(3) / 2 + v / 2, -v) - r / 2
    if shape == "cross":
        arm = 0.35 * r
        return np.minimum(np.maximum(abs(u) - r, abs(v) - arm), np.maximum(abs(u) - arm, abs(v) - r))
    if shape == "ring":
        return abs(np.hypot(u, v) - 0.72 * r) - 0.3 * r
    raise ValueError(f"unknown shape {shape}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Brightness factor in object coordinates, so texture turns with the object."""
    if texture == "solid":
        return np.ones_like(u)
    wave = np.sin(2 * np.pi * u / period)
    if texture == "checker":
        wave = wave * np.sin(2 * np.pi * v / period)
    return 0.62 + 0.38 * np.clip(3 * wave, -1, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, dull random colour field (float (S,S,3) in [0,1])."""
    coarse = np.empty((3, 3, 3))
    for i in range(3):
        for j in range(3):
            coarse[i, j] = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.2, 0.6))
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255


def render_frame(background: np.ndarray, look: ObjectLook, x: float, y: float, angle: float) -> np.ndarray:
    """Draw the object at (x, y) (pixels, wrapping around the frame edges) turned by `angle`."""
    size = background.shape[0]
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = (coords[None, :] - x + size / 2) % size - size / 2  # torus offsets
    dy = (coords[:, None] - y + size / 2) % size - size / 2
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    alpha = np.clip(0.5 - _shape_distance(look.shape, u, v, look.radius), 0, 1)[..., None]
    colour = np.array(colorsys.hsv_to_rgb(look.hue % 1.0, look.saturation, look.value), dtype=np.float32)
    shade = _texture(look.texture, u, v, look.stripe_period)[..., None]
    pixels = background * (1 - alpha) + colour * shade * alpha
    return (pixels * 255 + 0.5).astype(np.uint8)


def _random_look(rng: np.random.Generator, size: int, shape: str, hue: float, texture: str) -> ObjectLook:
    radius = rng.uniform(0.14, 0.22) * size
    return ObjectLook(
        shape=shape, hue=hue, saturation=rng.uniform(0.75, 1.0), value=rng.uniform(0.75, 1.0), texture=texture,
        radius=radius, stripe_period=radius * rng.uniform(0.6, 0.9),
    )


def _class_look(rng: np.random.Generator, size: int, label: int) -> ObjectLook:
    _, shape, hue, texture = APPEARANCE_CLASSES[label]
    return _random_look(rng, size, shape, hue + rng.uniform(-0.02, 0.02), texture)


def render_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """uint8 (S,S,3): an object of appearance class `label`, random pose and background."""
    look = _class_look(rng, size, label)
    return render_frame(_background(rng, size), look, *rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi))


def render_spatial_clip(rng: np.random.Generator, size: int, frames: int, label: int) -> np.ndarray:
    """uint8 (T,S,S,3): appearance class `label`; direction, speed and spin are random nuisances."""
    look = _class_look(rng, size, label)
    background = _background(rng, size)
    x, y = rng.uniform(0, size, 2)
    heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0) * size / 64
    angle, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2)
    return np.stack([
        render_frame(background, look, x + t * speed * np.cos(heading), y + t * speed * np.sin(heading),
                     angle + t * spin)
        for t in range(frames)
    ])


def render_temporal_base(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """uint8 (T,S,S,3): a label-independent pale object sliding right on a dark torus.

    Start position and angle are uniform, so every frame has the same distribution. The speed
    keeps the fastest class (three passes, 3x the base speed) under half a frame per step, so
    the direction of every step is unambiguous on the torus. The object is brighter than the
    background in every channel and neither rolls nor carries a texture: with random hues on
    mid-grey fields and a rolling textured object the edge contrast flips sign from clip to clip,
    and the debug Video Swin stayed at chance even on left-versus-right (docs/notes/demo.md).
    """
    look = _random_look(rng, size, SHAPES[rng.integers(len(SHAPES))], rng.random(), "solid")
    look = dataclasses.replace(look, saturation=rng.uniform(0.2, 0.5))
    background = _background(rng, size) * TEMPORAL_BACKGROUND_DIMMING
    x, y = rng.uniform(0, size, 2)
    speed = rng.uniform(0.6, 0.9) * size / frames  # pixels per frame, ~0.75 of the width per clip
    angle = rng.uniform(0, 2 * np.pi)
    return np.stack([render_frame(background, look, x + t * speed, y, angle) for t in range(frames)])


def temporal_order(label: int, frames: int) -> list[int]:
    """The order in which class `label` shows the base frames 0..T-1 (a permutation)."""
    passes = label // 2 + 1  # 1: straight, 2: there and back, 3: there, back, there
    forward = []
    for k in range(passes):
        lane = list(range(k, frames, passes))  # every passes-th frame: `passes` x the speed
        forward += lane if k % 2 == 0 else lane[::-1]
    if label % 2 == 1:  # the mirrored twin: frame i -> T-1-i turns rightward into leftward motion
        return [frames - 1 - i for i in forward]
    return forward


def render_temporal_clip(rng: np.random.Generator, size: int, frames: int, label: int) -> np.ndarray:
    """uint8 (T,S,S,3): the base frames in the order of class `label`."""
    return render_temporal_base(rng, size, frames)[temporal_order(label, frames)]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def write_h264(path: str, frames: np.ndarray, *, intra_only: bool = False, fps: int = FPS) -> None:
    """Encode uint8 (T,H,W,3) as H.264 (libx264, yuv420p) in an mp4; bit-exact for equal input.

    `intra_only`: every frame an IDR frame at a constant quantiser, so each decoded frame depends
    on that frame alone (rate control would otherwise tie a frame's quality to its neighbours).
    """
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # Constant quantiser, one thread, no lookahead decisions (rate control, B-frames, scene cuts)
        # and explicit timestamps: with crf rate control the bytes differed between identical runs.
        gop = {"g": "1"} if intra_only else {}
        stream.options = {"preset": "fast", "threads": "1", "qp": "22", **gop,
                          "x264-params": "lookahead-threads=1:bframes=0:scenecut=0:rc-lookahead=0"}
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class _Inline:
    """The `map` of a process pool, run in this process (workers <= 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, function, items, chunksize=1):
        return map(function, items)


@dataclass(frozen=True)
class _Job:
    part: str
    split: str
    number: int
    label: int
    relative_path: str


def _make_one(arguments: tuple[str, int, int, int, _Job]) -> None:
    out_dir, seed, size, frames, job = arguments
    rng = np.random.default_rng([seed, _PARTS[job.part], _SPLITS[job.split], job.number])
    path = os.path.join(out_dir, job.part, job.relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if job.part == "images":
        Image.fromarray(render_image(rng, size, job.label)).save(path)
    elif job.part == "spatial":
        write_h264(path, render_spatial_clip(rng, size, frames, job.label))
    else:
        write_h264(path, render_temporal_clip(rng, size, frames, job.label), intra_only=True)


def _jobs(part: str, split: str, per_class: int, class_names: list[str]) -> list[_Job]:
    jobs = []
    for number in range(per_class * len(class_names)):
        label = number % len(class_names)
        name = f"{split}_{number:05d}"
        if part == "images":
            relative = f"{split}/{class_names[label]}/{name}.png"
        elif part == "spatial":
            relative = f"{split}/{class_names[label]}/{name}.mp4"
        else:
            relative = f"{name}.mp4"  # flat, like Something-Something's video folder
        jobs.append(_Job(part, split, number, label, relative))
    return jobs


@dataclass(frozen=True)
class SynthParams:
    """Everything the benchmark's content depends on (stored in benchmark.json)."""

    seed: int = 0
    size: int = 64
    frames: int = 16
    images_per_class: int = 40
    val_images_per_class: int = 10
    videos_per_class: int = 24
    val_videos_per_class: int = 8

    def __post_init__(self):
        if self.size < 16 or self.size % 2:
            raise DataError(f"--size must be an even number >= 16 (H.264 yuv420p), got {self.size}")
        if self.frames < 6:
            raise DataError(f"--frames must be >= 6 (the temporal classes need three passes), got {self.frames}")


def make_synthetic_benchmark(
    out_dir: str,
    seed: int = 0,
    size: int = 64,
    frames: int = 16,
    images_per_class: int = 40,
    val_images_per_class: int = 10,
    videos_per_class: int = 24,
    val_videos_per_class: int = 8,
    workers: int = 1,
    reuse: bool = True,
) -> dict:
    """Write the benchmark into `out_dir` and return the paths of its annotation files and
    folders (see `benchmark_paths`). With `reuse`, a complete benchmark already there with the
    same parameters is kept as it is."""
    params = SynthParams(seed, size, frames, images_per_class, val_images_per_class, videos_per_class,
                         val_videos_per_class)
    paths = benchmark_paths(out_dir)
    if os.path.exists(paths["manifest"]):
        with open(paths["manifest"], encoding="utf-8") as handle:
            old = json.load(handle)
        if reuse and old.get("complete") and old.get("params") == asdict(params):
            return paths
        for part in _PARTS:  # an older or unfinished benchmark: drop its files so no strays remain
            shutil.rmtree(os.path.join(out_dir, part), ignore_errors=True)
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        raise DataError(f"{out_dir} is not empty and holds no synthetic benchmark; choose an empty or new folder")
    os.makedirs(out_dir, exist_ok=True)
    with open(paths["manifest"], "w", encoding="utf-8") as handle:  # claims the folder, marks it unfinished
        json.dump({"params": asdict(params), "complete": False}, handle)
    image_names = [name for name, *_ in APPEARANCE_CLASSES]
    temporal_names = [name for name, _ in TEMPORAL_CLASSES]
    jobs = {
        ("images", "train"): _jobs("images", "train", images_per_class, image_names),
        ("images", "val"): _jobs("images", "val", val_images_per_class, image_names),
        ("spatial", "train"): _jobs("spatial", "train", videos_per_class, image_names),
        ("spatial", "val"): _jobs("spatial", "val", val_videos_per_class, image_names),
        ("temporal", "train"): _jobs("temporal", "train", videos_per_class, temporal_names),
        ("temporal", "val"): _jobs("temporal", "val", val_videos_per_class, temporal_names),
    }
    seconds = {}
    with ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for part in _PARTS:
            started = time.perf_counter()
            part_jobs = jobs[(part, "train")] + jobs[(part, "val")]
            list(pool.map(_make_one, [(str(out_dir), seed, size, frames, job) for job in part_jobs], chunksize=8))
            seconds[part] = time.perf_counter() - started
    for (part, split), part_jobs in jobs.items():
        os.makedirs(os.path.join(out_dir, part), exist_ok=True)
        with open(paths[f"{part}_{split}"] if part != "images" else paths[f"images_{split}_list"], "w") as handle:
            handle.writelines(f"{job.relative_path} {job.label}\n" for job in part_jobs)
    _write_class_names(paths["images_classes"], image_names)
    _write_class_names(paths["spatial_classes"], image_names)
    _write_class_names(paths["temporal_classes"], temporal_names)
    _write_ssv2(paths, jobs)
    counts = {f"{part}_{split}": len(part_jobs) for (part, split), part_jobs in jobs.items()}
    clips = sum(n for name, n in counts.items() if not name.startswith("images"))
    manifest = {
        "params": asdict(params),
        "complete": True,
        "counts": counts,
        "workers": workers,
        "seconds": {part: round(t, 2) for part, t in seconds.items()},
        "images_per_second": _rate(counts["images_train"] + counts["images_val"], seconds["images"]),
        "clips_per_second": _rate(clips, seconds["spatial"] + seconds["temporal"]),
    }
    with open(paths["manifest"], "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    return paths


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if count else 0.0


def benchmark_paths(out_dir: str) -> dict:
    """Where `make_synthetic_benchmark` puts everything, plus each part's class count.

    List files are `path label` with paths relative to their folder (`<part>_root`), which is
    also the default root of the loaders.
    """
    out = str(out_dir)
    join = os.path.join
    return {
        "images_num_classes": len(APPEARANCE_CLASSES),
        "spatial_num_classes": len(APPEARANCE_CLASSES),
        "temporal_num_classes": len(TEMPORAL_CLASSES),
        "root": out,
        "spatial_root": join(out, "spatial"),
        "temporal_root": join(out, "temporal"),
        "manifest": join(out, "benchmark.json"),
        "images_train": join(out, "images", "train"),  # class folders
        "images_val": join(out, "images", "val"),
        "images_train_list": join(out, "images", "train.txt"),
        "images_val_list": join(out, "images", "val.txt"),
        "images_classes": join(out, "images", "classes.txt"),
        "spatial_train": join(out, "spatial", "train.txt"),
        "spatial_val": join(out, "spatial", "val.txt"),
        "spatial_train_folder": join(out, "spatial", "train"),  # class folders of videos
        "spatial_val_folder": join(out, "spatial", "val"),
        "spatial_classes": join(out, "spatial", "classes.txt"),
        "temporal_train": join(out, "temporal", "train.txt"),
        "temporal_val": join(out, "temporal", "val.txt"),
        "temporal_classes": join(out, "temporal", "classes.txt"),
        "temporal_ssv2_train": join(out, "temporal", "train.json"),  # Something-Something v2 format
        "temporal_ssv2_val": join(out, "temporal", "validation.json"),
        "temporal_ssv2_labels": join(out, "temporal", "labels.json"),
    }


def _write_class_names(path: str, names: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}\n" for name in names)


def _write_ssv2(paths: dict[str, str], jobs: dict) -> None:
    def plain(template):
        return template.replace("[", "").replace("]", "")

    with open(paths["temporal_ssv2_labels"], "w", encoding="utf-8") as handle:
        labels = {plain(template): str(label) for label, (_, template) in enumerate(TEMPORAL_CLASSES)}
        json.dump(labels, handle, indent=1)
    for split, key in (("train", "temporal_ssv2_train"), ("val", "temporal_ssv2_val")):
        entries = [
            {
                "id": job.relative_path.removesuffix(".mp4"),
                "label": plain(TEMPORAL_CLASSES[job.label][1]).replace("something", "the object"),
                "template": TEMPORAL_CLASSES[job.label][1],
                "placeholders": ["the object"],
            }
            for job in jobs[("temporal", split)]
        ]
        with open(paths[key], "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=1)


def run_synth(args) -> int:
    """`bevt synth`: write the benchmark, print where everything is and how fast it went."""
    paths = make_synthetic_benchmark(
        args.out, seed=args.seed, size=args.size, frames=args.frames, images_per_class=args.images_per_class,
        val_images_per_class=args.val_images_per_class, videos_per_class=args.videos_per_class,
        val_videos_per_class=args.val_videos_per_class, workers=args.workers, reuse=False,
    )
    with open(paths["manifest"], encoding="utf-8") as handle:
        manifest = json.load(handle)
    print(f"synthetic benchmark in {args.out}: {manifest['counts']}")
    print(f"{manifest['clips_per_second']:.1f} clips/s, {manifest['images_per_second']:.1f} images/s "
          f"with {manifest['workers']} worker(s); seconds per part {manifest['seconds']}")
    for name, value in paths.items():
        print(f"  {name:22s} {value}")
    return 0
