"""Annotation formats, malformed lines, skipping unreadable samples, and skip accounting."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bevt.config import DataConfig
from bevt.data.datasets import (
    ImageDataset, SkipCounter, VideoDataset, check_labels, collate, count_classes, load_annotations, write_annotations,
)
from bevt.data.loader import build_image_pretrain_loader
from bevt.data.sampling import IntervalSampler
from bevt.data.synthetic import write_h264
from bevt.data.transforms import FinetuneTransform
from bevt.errors import DataError
from bevt.masking import BlockwiseMaskGenerator


def tiny_video(path, frames: int = 12, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)
    write_h264(str(path), pixels)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------


def test_list_file(tmp_path):
    (tmp_path / "train.txt").write_text("a/x.mp4 3\n\nwith space/y.mp4 0\n")
    found = load_annotations(str(tmp_path / "train.txt"))
    assert [(s.path, s.label) for s in found.samples] == [
        (str(tmp_path / "a/x.mp4"), 3),
        (str(tmp_path / "with space/y.mp4"), 0),
    ]
    assert load_annotations(str(tmp_path / "train.txt"), root="/data").samples[0].path == "/data/a/x.mp4"


def test_malformed_list_line_names_file_and_line(tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("a.mp4 1\nb.mp4 1\nc.mp4 dog\n")
    with pytest.raises(DataError, match=r"train\.txt:3: expected '<path> <integer label>', got 'c\.mp4 dog'"):
        load_annotations(str(bad))


def test_kinetics_csv_flat_and_label_folders(tmp_path):
    rows = [("abseiling", "aaa", 10, 20), ("air drumming", "bbb", 0, 10), ("abseiling", "ccc", 5, 15)]
    with open(tmp_path / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows([*row, "train"] for row in rows)
    found = load_annotations(str(tmp_path / "train.csv"))
    assert found.class_names == ["abseiling", "air drumming"]
    assert [s.label for s in found.samples] == [0, 1, 0]
    assert found.samples[0].path == str(tmp_path / "aaa_000010_000020.mp4")
    (tmp_path / "air_drumming").mkdir()  # class folders, named with underscores by some downloaders
    assert load_annotations(str(tmp_path / "train.csv")).samples[1].path == str(
        tmp_path / "air_drumming" / "bbb_000000_000010.mp4"
    )
    clean = tmp_path / "clean.csv"
    write_annotations(found, found.samples[1:], str(clean))
    assert [s.label for s in load_annotations(str(clean), root=str(tmp_path)).samples] == [1, 0]


def test_malformed_kinetics_row(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nx,aaa,1,2,train\nx,bbb,oops,2,train\n")
    with pytest.raises(DataError, match=r"k\.csv:3: time_start/time_end must be numbers"):
        load_annotations(str(tmp_path / "k.csv"))
    (tmp_path / "h.csv").write_text("label,id\nx,aaa\n")
    with pytest.raises(DataError, match=r"h\.csv:1: Kinetics CSV header lacks youtube_id"):
        load_annotations(str(tmp_path / "h.csv"))


def test_ssv2_json(tmp_path):
    labels = {"Moving something up": "0", "Pushing something from left to right": "1"}
    entries = [
        {"id": "7", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right",
         "placeholders": ["a cup"]},
        {"id": "9", "label": "moving a pen up", "template": "Moving [something] up", "placeholders": ["a pen"]},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text(json.dumps(entries))
    found = load_annotations(str(tmp_path / "train.json"), labels=str(tmp_path / "labels.json"))
    assert [(s.path, s.label) for s in found.samples] == [(str(tmp_path / "7.webm"), 1), (str(tmp_path / "9.webm"), 0)]
    assert found.class_names == ["Moving something up", "Pushing something from left to right"]
    unlabelled = load_annotations(str(tmp_path / "train.json"))  # no labels json: usable for pretraining
    assert [s.label for s in unlabelled.samples] == [-1, -1]


def test_malformed_ssv2_entry_and_json(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Moving something up": "0"}))
    (tmp_path / "train.json").write_text(json.dumps([{"id": "1", "template": "Moving [something] up"},
                                                     {"id": "2", "template": "Dancing with [something]"}]))
    with pytest.raises(DataError, match=r"train\.json: entry 1 \(id 2\): template 'Dancing with something' not in"):
        load_annotations(str(tmp_path / "train.json"), labels=str(tmp_path / "labels.json"))
    (tmp_path / "broken.json").write_text('[\n {"id": "1"},\n {"id": 2,,}\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        load_annotations(str(tmp_path / "broken.json"))


def test_diving48_json(tmp_path):
    entries = [{"vid_name": "-mmq0PT-u8k_00155", "label": 12, "start_frame": 0, "end_frame": 184}]
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(entries))
    found = load_annotations(str(tmp_path / "Diving48_V2_train.json"))
    assert [(s.path, s.label) for s in found.samples] == [(str(tmp_path / "-mmq0PT-u8k_00155.mp4"), 12)]
    (tmp_path / "bad.json").write_text(json.dumps(entries + [{"vid_name": "x", "label": "twelve"}]))
    with pytest.raises(DataError, match=r"bad\.json: entry 1 needs 'vid_name' and an integer 'label'"):
        load_annotations(str(tmp_path / "bad.json"))


def test_class_folders(tmp_path):
    for name in ("b_class/x.mp4", "a_class/sub/y.webm", "a_class/z.mp4", "a_class/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = load_annotations(str(tmp_path))
    assert found.class_names == ["a_class", "b_class"]
    assert [(s.path, s.label) for s in found.samples] == [
        (str(tmp_path / "a_class/z.mp4"), 0),
        (str(tmp_path / "a_class/sub/y.webm"), 0),
        (str(tmp_path / "b_class/x.mp4"), 1),
    ]


# ----------------------------------------------------------------------------------------------
# Skipping
# ----------------------------------------------------------------------------------------------


def broken_set(tmp_path):
    """good, missing, zero bytes, good: a list file with two unreadable samples."""
    tiny_video(tmp_path / "good0.mp4", seed=0)
    (tmp_path / "empty.mp4").write_bytes(b"")
    tiny_video(tmp_path / "good1.mp4", seed=1)
    (tmp_path / "list.txt").write_text("good0.mp4 0\nmissing.mp4 1\nempty.mp4 2\ngood1.mp4 3\n")
    return load_annotations(str(tmp_path / "list.txt")).samples


def clip_dataset(samples, **kwargs):
    return VideoDataset(samples, IntervalSampler(4, 2), FinetuneTransform(16, scale=(0.5, 1.0)), seed=0, **kwargs)


# ----------------------------------------------------------------------------------------------
# Labels against the class count
# ----------------------------------------------------------------------------------------------


def check(path, num_classes, labels=None):
    found = load_annotations(str(path), labels=labels)
    check_labels(str(path), found.samples, found.class_names, num_classes)


def test_out_of_range_and_negative_list_labels_name_file_and_line(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("a.mp4 0\nb.mp4 4\nc.mp4 7\n")
    check(listing, 8)
    with pytest.raises(DataError, match=r"train\.txt:3: label 7 is outside 0\.\.4 \(finetune\.num_classes=5\)"):
        check(listing, 5)
    listing.write_text("a.mp4 0\nb.mp4 -2\n")
    with pytest.raises(DataError, match=r"train\.txt:2: label -2 is negative; labels count from 0"):
        load_annotations(str(listing))


def test_a_class_list_that_disagrees_with_num_classes(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    check(tmp_path / "train.txt", 3, labels=str(tmp_path / "classes.txt"))
    with pytest.raises(DataError, match=r"train\.txt: the annotations name 3 classes, but finetune\.num_classes=4"):
        check(tmp_path / "train.txt", 4, labels=str(tmp_path / "classes.txt"))


def test_ssv2_label_ids_beyond_num_classes_name_the_entry(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something": "0", "Pulling something": "9"}))
    (tmp_path / "train.json").write_text(json.dumps([{"id": "1", "template": "Pushing [something]"},
                                                     {"id": "2", "template": "Pulling [something]"}]))
    found = load_annotations(str(tmp_path / "train.json"), labels=str(tmp_path / "labels.json"))
    with pytest.raises(DataError, match=r"train\.json: entry 1 \(id 2\): label 9 is outside 0\.\.1"):
        check_labels("train.json", found.samples, None, 2)


def test_unlabelled_samples_cannot_train(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps([{"id": "1"}]))
    found = load_annotations(str(tmp_path / "test.json"))
    with pytest.raises(DataError, match=r"test\.json: entry 0 \(id 1\): .*1\.webm has no label"):
        check_labels("test.json", found.samples, None, 2)


def test_kinetics_label_outside_the_class_file_names_the_line(tmp_path):
    with open(tmp_path / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows([["abseiling", "aaa", 0, 10, "train"], ["juggling", "bbb", 0, 10, "train"]])
    (tmp_path / "classes.txt").write_text("abseiling\n")
    with pytest.raises(DataError, match=r"train\.csv:3: label 'juggling' is not in the class list"):
        load_annotations(str(tmp_path / "train.csv"), labels=str(tmp_path / "classes.txt"))


def test_class_count_comes_from_class_names_or_folders_never_from_a_bare_list(tmp_path):
    for name in ("b_dog", "a_cat", "c_bird"):
        (tmp_path / "videos" / name).mkdir(parents=True)
        (tmp_path / "videos" / name / "x.mp4").write_bytes(b"")
    assert count_classes("videos", load_annotations(str(tmp_path / "videos"))) == 3
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
    assert count_classes("train.txt", load_annotations(str(tmp_path / "train.txt"),
                                                       labels=str(tmp_path / "classes.txt"))) == 4
    with pytest.raises(DataError, match=r"finetune\.num_classes: not given, and train\.txt names no classes"):
        count_classes("train.txt", load_annotations(str(tmp_path / "train.txt")))


def test_unreadable_sample_is_replaced_by_the_next_one_and_recorded(tmp_path):
    dataset = clip_dataset(broken_set(tmp_path))
    item = dataset[(0, 1)]  # missing -> empty -> good1
    assert item["index"] == 3 and item["label"] == 3
    assert item["video"].shape == (3, 4, 16, 16)
    assert [(path.rsplit("/", 1)[1], reason) for path, reason in item["skipped"]] == [
        ("missing.mp4", "missing: no such file"),
        ("empty.mp4", "empty: zero bytes"),
    ]
    assert dataset[(0, 0)]["skipped"] == []


def test_skips_cross_worker_processes_inside_the_batch(tmp_path):
    dataset = clip_dataset(broken_set(tmp_path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    reasons = sorted(reason for batch in batches for _, reason in batch["skipped"])
    # index 1 skips missing+empty, index 2 skips empty
    assert reasons == ["empty: zero bytes", "empty: zero bytes", "missing: no such file"]
    counter = SkipCounter(max_skip_fraction=0.5, min_samples=1000)
    for batch in batches:
        counter.update(batch)
    summary = counter.end_epoch(0, str(tmp_path / "run"))
    assert summary["skipped"] == 3 and summary["delivered"] == 4
    written = json.loads((tmp_path / "run" / "skipped_epoch000.json").read_text())
    assert written["by_kind"] == {"empty": 2, "missing": 1}


def test_too_many_unreadable_in_a_row_is_an_error(tmp_path):
    samples = broken_set(tmp_path)
    dataset = clip_dataset(samples[1:3] * 3)  # nothing readable at all
    with pytest.raises(DataError, match="samples in a row could not be read.*bevt data check"):
        dataset[0]


def test_skip_counter_fails_past_the_threshold():
    counter = SkipCounter(max_skip_fraction=0.1, min_samples=10)
    good = {"index": torch.arange(8), "skipped": []}
    counter.update(good)  # 8 attempted: below min_samples, nothing checked yet
    with pytest.raises(DataError, match=r"2 of 10 samples this epoch could not be read \(20\.0% > "
                                         r"data\.max_skip_fraction=10\.0%\): 2 missing"):
        counter.update({"index": torch.arange(0), "skipped": [("a.mp4", "missing: no such file")] * 2})
    lenient = SkipCounter(max_skip_fraction=0.5, min_samples=100)
    lenient.update({"index": torch.arange(3), "skipped": [("a.mp4", "truncated: x")]})
    assert lenient.end_epoch(0)["fraction"] == 0.25
    lenient.update({"index": torch.arange(1), "skipped": [("a.mp4", "truncated: x")] * 3})
    with pytest.raises(DataError):  # checked at the end of every epoch, whatever min_samples
        lenient.end_epoch(1)


# ----------------------------------------------------------------------------------------------
# The image stream fed with video frames (paper Table 7)
# ----------------------------------------------------------------------------------------------


def gray_steps_video(path, frames=6):
    """Frame i is uniformly gray at 40 * i, so a decoded frame tells its index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.repeat((np.arange(frames, dtype=np.uint8) * 40)[:, None, None, None], 32 * 32 * 3).reshape(frames, 32, 32, 3)
    write_h264(str(path), pixels)
    return str(path)


def frame_index(image):
    return int(round(float(image.float().mean()) / 40))


def identity_view(frames):
    """Stands in for PretrainTransform: (T,H,W,3) uint8 -> the same pixels as a view and a tokenizer view."""
    view = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
    return {"view": view, "tok": view}


def test_image_stream_draws_one_random_frame_per_video_sample(tmp_path):
    for i in range(3):
        gray_steps_video(tmp_path / f"v{i}.mp4")
    (tmp_path / "train.txt").write_text("".join(f"v{i}.mp4 {i}\n" for i in range(3)))
    samples = load_annotations(str(tmp_path / "train.txt")).samples
    dataset = ImageDataset(samples, identity_view, seed=5)
    item = dataset[(0, 1)]
    assert item["image"].shape == (3, 32, 32) and item["index"] == 1 and item["label"] == 1
    drawn = [frame_index(dataset[(epoch, index)]["image"]) for epoch in range(8) for index in range(3)]
    assert len(set(drawn)) >= 4 and set(drawn) <= set(range(6))  # uniform over the 6 frames, not always the first
    again = ImageDataset(samples, identity_view, seed=5)  # a resumed run: the same frame for the same key
    assert all(frame_index(again[(epoch, index)]["image"]) == drawn[epoch * 3 + index]
               for epoch in range(8) for index in range(3))


def test_data_images_accepts_a_video_folder(tmp_path):
    for label in ("a", "b"):
        for i in range(2):
            gray_steps_video(tmp_path / "videos" / label / f"{i}.mp4")
    data = DataConfig(images=str(tmp_path / "videos"), size=32, short_side=(32, 32), image_batch_size=2, workers=0)
    loader = build_image_pretrain_loader(data, BlockwiseMaskGenerator((2, 2), 2, min_cells=1), seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_tok"].shape == (2, 3, 16, 16)
    assert batch["mask"].shape == (2, 2, 2) and batch["skipped"] == []


def test_a_folder_without_class_folders_holds_unlabelled_files(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not media")
    found = load_annotations(str(tmp_path))
    assert [Path(s.path).name for s in found.samples] == ["0.png", "1.png", "2.png"]
    assert {s.label for s in found.samples} == {-1} and found.class_names is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="expected one sub-folder per class, or video / image files"):
        load_annotations(str(empty))
