"""The built-in benchmark: deterministic, readable in every written format, and with the property
it exists for: the temporal task cannot be solved from single frames or shuffled clips, the
spatial task can."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from bevt.data.datasets import load_annotations
from bevt.data.synthetic import (
    TEMPORAL_CLASSES,
    make_synthetic_benchmark,
    render_temporal_base,
    temporal_order,
    write_h264,
)
from bevt.errors import DataError
from videos import read_frames

SIZE, FRAMES = 32, 8


def small_benchmark(out, **counts):
    counts = {"images_per_class": 2, "val_images_per_class": 1, "videos_per_class": 2, "val_videos_per_class": 1,
              **counts}
    return make_synthetic_benchmark(out, seed=7, size=SIZE, frames=FRAMES, **counts)


def file_hashes(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "benchmark.json"}


def test_deterministic_and_readable_in_every_format(tmp_path):
    paths = small_benchmark(tmp_path / "a")
    small_benchmark(tmp_path / "b")
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    listed = load_annotations(paths["temporal_train"])
    ssv2 = load_annotations(paths["temporal_ssv2_train"], labels=paths["temporal_ssv2_labels"])
    assert [(s.path, s.label) for s in listed.samples] == [(s.path, s.label) for s in ssv2.samples]
    assert ssv2.class_names == [t.replace("[", "").replace("]", "") for _, t in TEMPORAL_CLASSES]
    spatial = load_annotations(paths["spatial_train"])
    folders = load_annotations(paths["spatial_train_folder"])
    assert sorted((s.path, s.label) for s in spatial.samples) == sorted((s.path, s.label) for s in folders.samples)
    images = load_annotations(paths["images_train"])
    assert len(images.samples) == 16 and Image.open(images.samples[0].path).size == (SIZE, SIZE)
    assert read_frames(spatial.samples[0].path, range(FRAMES)).shape == (FRAMES, SIZE, SIZE, 3)
    manifest = json.loads(open(paths["manifest"]).read())
    assert manifest["clips_per_second"] > 0 and manifest["counts"]["temporal_val"] == 6


def test_reuse_and_refusing_foreign_folders(tmp_path):
    paths = small_benchmark(tmp_path / "bench")
    stamp = (tmp_path / "bench" / "benchmark.json").stat().st_mtime_ns
    small_benchmark(tmp_path / "bench")  # same parameters: kept
    assert (tmp_path / "bench" / "benchmark.json").stat().st_mtime_ns == stamp
    small_benchmark(tmp_path / "bench", videos_per_class=1)  # new parameters: old files do not linger
    assert len(load_annotations(paths["spatial_train_folder"]).samples) == 8
    manifest = json.loads(open(paths["manifest"]).read())
    (tmp_path / "bench" / "benchmark.json").write_text(json.dumps({**manifest, "complete": False}))
    small_benchmark(tmp_path / "bench", videos_per_class=1)  # an interrupted run is redone, not reused
    assert json.loads(open(paths["manifest"]).read())["complete"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty and holds no synthetic benchmark"):
        small_benchmark(tmp_path / "mine")


def test_temporal_classes_are_permutations_of_one_label_free_base(tmp_path):
    """By construction: every class shows the same decoded frames, only in another order."""
    base = render_temporal_base(np.random.default_rng(0), SIZE, FRAMES)
    decoded = {}
    for label in range(len(TEMPORAL_CLASSES)):
        order = temporal_order(label, FRAMES)
        assert sorted(order) == list(range(FRAMES))
        write_h264(str(tmp_path / f"{label}.mp4"), base[order], intra_only=True)
        decoded[label] = read_frames(str(tmp_path / f"{label}.mp4"), range(FRAMES))
    reference = decoded[0]  # identity order
    for label, frames in decoded.items():
        for t, i in enumerate(temporal_order(label, FRAMES)):
            np.testing.assert_array_equal(frames[t], reference[i])


def frame_features(frame: np.ndarray) -> np.ndarray:
    """What a one-frame classifier can use: the object's colour (mean RGB and a fine hue
    histogram of the saturated pixels) and a coarse 8x8 picture (position, shape, layout)."""
    hsv = np.asarray(Image.fromarray(frame).convert("HSV"))
    saturated = hsv[..., 1] > 128
    count = max(saturated.sum(), 1)
    hues = np.histogram(hsv[..., 0][saturated], bins=48, range=(0, 256))[0] / count
    colour = frame[saturated].sum(0) / count / 255
    coarse = frame.reshape(8, SIZE // 8, 8, SIZE // 8, 3).mean(axis=(1, 3)).ravel() / 255
    return np.concatenate([colour, hues, coarse])


def clip_statistics(clip: np.ndarray) -> np.ndarray:
    """Features of a clip that ignore frame order (mean and spread of its frame features)."""
    features = np.stack([frame_features(f) for f in clip])
    return np.concatenate([features.mean(0), features.std(0)])


def object_steps(clip: np.ndarray) -> np.ndarray:
    """Per-step horizontal motion of the object (wrapped to the torus): what order carries."""
    bright = np.asarray([np.asarray(Image.fromarray(f).convert("HSV"))[..., 2] > 128 for f in clip])
    phase = np.exp(2j * np.pi * (np.arange(SIZE) + 0.5) / SIZE)
    x = np.angle((bright.sum(1) * phase).sum(1)) * SIZE / (2 * np.pi)
    return (np.diff(x) + SIZE / 2) % SIZE - SIZE / 2


def accuracy_of_linear_probe(train_x, train_y, test_x, test_y, classes) -> float:
    """A ridge-regression linear classifier (one least-squares solve, so the test stays fast)."""
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    design = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    targets = np.eye(classes)[np.asarray(train_y)]
    weights = np.linalg.solve(design.T @ design + 1.0 * np.eye(design.shape[1]), design.T @ targets)
    predicted = (np.c_[(test_x - mean) / std, np.ones(len(test_x))] @ weights).argmax(1)
    return float((predicted == np.asarray(test_y)).mean())


def clips_of(list_file):
    samples = load_annotations(list_file).samples
    return [read_frames(s.path, range(FRAMES)) for s in samples], [s.label for s in samples]


def test_one_frame_solves_the_spatial_task_but_not_the_temporal_one(tmp_path):
    paths = small_benchmark(tmp_path, images_per_class=0, val_images_per_class=0, videos_per_class=8,
                            val_videos_per_class=4)
    results = {}
    for task in ("spatial", "temporal"):
        train_clips, train_labels = clips_of(paths[f"{task}_train"])
        val_clips, val_labels = clips_of(paths[f"{task}_val"])
        classes = paths[f"{task}_num_classes"]
        # one frame (every frame of every clip, each on its own)
        results[task] = accuracy_of_linear_probe(
            [frame_features(f) for clip in train_clips for f in clip], np.repeat(train_labels, FRAMES),
            [frame_features(f) for clip in val_clips for f in clip], np.repeat(val_labels, FRAMES), classes,
        )
        if task == "temporal":
            # a shuffled clip: order-free statistics of all its frames
            results["temporal_shuffled"] = accuracy_of_linear_probe(
                [clip_statistics(c) for c in train_clips], train_labels, [clip_statistics(c) for c in val_clips],
                val_labels, classes,
            )
            # the frames in order do carry the label
            results["temporal_ordered"] = accuracy_of_linear_probe(
                [object_steps(c) for c in train_clips], train_labels, [object_steps(c) for c in val_clips],
                val_labels, classes,
            )
    chance = 1 / len(TEMPORAL_CLASSES)
    assert results["spatial"] > 0.9, results
    assert results["temporal"] < chance + 0.12, results
    assert results["temporal_shuffled"] < chance + 0.15, results
    assert results["temporal_ordered"] > 0.9, results
