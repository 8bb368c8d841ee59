"""The annotation formats users bring, the datasets built on them, and skip accounting.

Formats (`load_annotations` picks by path): mmaction list files (`relative/path label` per
line), the Kinetics CSV, Something-Something v2 json (+ labels json), Diving48 V2 json, and
class-folder trees of videos or images. A malformed line is a `DataError` naming file and line.

A sample that cannot be read (missing, zero bytes, truncated, undecodable, too short) does not
stop an epoch: the dataset takes the next index instead and records `(path, reason)` in the
sample's "skipped" list, which travels inside the batch out of the worker processes to the
`SkipCounter` in the main process.

Every random choice of a sample (clip position, augmentation, mask) is seeded from
(seed, epoch, index), never from a worker's global state, so a resumed run repeats it exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bevt.data.decode import UnreadableSample, check_readable_file, read_clip
from bevt.data.sampling import views_to_indices
from bevt.data.transforms import seeded
from bevt.errors import DataError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# ----------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One video or image; `label` is -1 when the annotation has none (e.g. a test split).
    `record` is the CSV row or json entry it came from, kept so `bevt data check --write-clean`
    can write the same format back; `where` names its line or entry for error messages."""

    path: str
    label: int
    record: object = field(default=None, compare=False, repr=False)
    where: str = field(default="", compare=False, repr=False)


@dataclass
class Annotations:
    """Samples of one annotation file or folder, in file order."""

    source: str
    format: str  # "list", "kinetics_csv", "ssv2_json", "diving48_json" or "folder"
    samples: list[Sample]
    class_names: list[str] | None = None
    csv_fields: list[str] | None = None


def load_annotations(path: str, root: str | None = None, labels: str | None = None) -> Annotations:
    """Read any supported annotation format; relative video paths are joined to `root`
    (default: the annotation file's folder). `labels`: the SSv2 labels json; for a list file or
    a Kinetics CSV, an optional class-name file, one name per line in label order (a Kinetics
    CSV defaults to its sorted labels)."""
    path = str(path)
    if os.path.isdir(path):
        return scan_class_folders(path)
    if not os.path.exists(path):
        raise DataError(f"annotation file not found: {path}")
    root = root if root is not None else os.path.dirname(os.path.abspath(path))
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".csv":
            return read_kinetics_csv(path, root, labels)
        if suffix == ".json":
            entries = _read_json(path)
            if entries and isinstance(entries[0], dict) and "vid_name" in entries[0]:
                return read_diving48_json(path, root, entries)
            return read_ssv2_json(path, root, labels, entries)
        return read_list_file(path, root, labels)
    except UnicodeDecodeError as error:  # a video or archive given where a text file belongs
        raise DataError(f"{path} (or its class-name file) is not UTF-8 text: {error.reason} at byte "
                        f"{error.start}; annotation files are text (list, Kinetics CSV, SSv2 / Diving48 json)") from None


def read_list_file(path: str, root: str, class_file: str | None = None) -> Annotations:
    """mmaction list: `relative/path label` per line (the path may contain spaces)."""
    samples = []
    with open(path, encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise DataError(f"{path}:{lineno}: expected '<path> <integer label>', got {text!r}")
            if int(parts[1]) < 0:
                raise DataError(f"{path}:{lineno}: label {parts[1]} is negative; labels count from 0")
            samples.append(Sample(os.path.join(root, parts[0]), int(parts[1]), where=f"{path}:{lineno}"))
    return Annotations(path, "list", samples, _read_class_names(class_file) if class_file else None)


KINETICS_FIELDS = ("youtube_id", "time_start", "time_end")


def read_kinetics_csv(path: str, root: str, class_file: str | None = None) -> Annotations:
    """Kinetics CSV (label, youtube_id, time_start, time_end, split) with trimmed clips named
    `<youtube_id>_<start:06d>_<end:06d>.mp4`, either flat in `root` or in `root/<label>/`."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [name for name in KINETICS_FIELDS if name not in fields]
        if missing:
            raise DataError(f"{path}:1: Kinetics CSV header lacks {', '.join(missing)} (found {', '.join(fields)})")
        rows = []
        for row in reader:
            lineno = reader.line_num
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise DataError(f"{path}:{lineno}: time_start/time_end must be numbers, got {row}") from None
            if not row["youtube_id"]:
                raise DataError(f"{path}:{lineno}: empty youtube_id")
            rows.append((row, f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4", lineno))
    if class_file:
        class_names = _read_class_names(class_file)
    else:
        class_names = sorted({row["label"] for row, _, _ in rows if row.get("label")})
    class_index = {name: i for i, name in enumerate(class_names)}
    folder_of_label = {}
    samples = []
    for row, filename, lineno in rows:
        label_name = row.get("label") or ""
        if label_name and label_name not in class_index:
            raise DataError(f"{path}:{lineno}: label {label_name!r} is not in the class list {class_file}")
        if label_name not in folder_of_label:
            folders = [f for f in _label_folders(label_name) if os.path.isdir(os.path.join(root, f))]
            folder_of_label[label_name] = folders[0] if folders else ""
        video = os.path.join(root, folder_of_label[label_name], filename)
        samples.append(Sample(video, class_index.get(label_name, -1), record=row, where=f"{path}:{lineno}"))
    return Annotations(path, "kinetics_csv", samples, class_names, csv_fields=list(fields))


def _read_class_names(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [name.strip() for name in handle if name.strip()]
    except FileNotFoundError:
        raise DataError(f"class-name file not found: {path}") from None


def _label_folders(label: str) -> list[str]:
    """Kinetics class folders are named with spaces or with underscores, depending on the tool."""
    return [label, label.replace(" ", "_")] if label else []


def read_ssv2_json(path: str, root: str, labels_file: str | None, entries: list | None = None) -> Annotations:
    """Something-Something v2: entries {"id", "template", ...}; the label is the template with
    its brackets removed, looked up in labels.json. Videos are `<root>/<id>.webm` (or .mp4)."""
    entries = entries if entries is not None else _read_json(path)
    class_index = {}
    if labels_file:
        raw = _read_json(labels_file, expect=dict)
        try:
            class_index = {name: int(i) for name, i in raw.items()}
        except ValueError:
            raise DataError(f"{labels_file}: label ids must be integers") from None
    extension = _ssv2_extension(root, entries)
    samples = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(f"{path}: entry {number} has no 'id': {str(entry)[:120]}")
        label = -1
        if class_index:
            if "template" not in entry:
                raise DataError(f"{path}: entry {number} (id {entry['id']}) has no 'template'")
            template = entry["template"].replace("[", "").replace("]", "")
            if template not in class_index:
                raise DataError(
                    f"{path}: entry {number} (id {entry['id']}): template {template!r} not in {labels_file}"
                )
            label = class_index[template]
        samples.append(Sample(os.path.join(root, f"{entry['id']}{extension}"), label, record=entry,
                              where=f"{path}: entry {number} (id {entry['id']})"))
    class_names = sorted(class_index, key=class_index.get) if class_index else None
    return Annotations(path, "ssv2_json", samples, class_names)


def _ssv2_extension(root: str, entries: list) -> str:
    """The official videos are .webm; re-encoded copies are often .mp4. Decided from the first entry."""
    if entries and isinstance(entries[0], dict) and "id" in entries[0]:
        for extension in (".webm", ".mp4"):
            if os.path.exists(os.path.join(root, f"{entries[0]['id']}{extension}")):
                return extension
    return ".webm"


def read_diving48_json(path: str, root: str, entries: list | None = None) -> Annotations:
    """Diving48 V2: entries {"vid_name", "label", "start_frame", "end_frame"}; videos are
    `<root>/<vid_name>.mp4`. The frame range is not used: the released clips are already trimmed."""
    entries = entries if entries is not None else _read_json(path)
    samples = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "vid_name" not in entry or not _is_int(str(entry.get("label", ""))):
            raise DataError(f"{path}: entry {number} needs 'vid_name' and an integer 'label': {str(entry)[:120]}")
        if int(entry["label"]) < 0:
            raise DataError(f"{path}: entry {number} (vid_name {entry['vid_name']}): "
                            f"label {entry['label']} is negative")
        samples.append(Sample(os.path.join(root, f"{entry['vid_name']}.mp4"), int(entry["label"]), record=entry,
                              where=f"{path}: entry {number} (vid_name {entry['vid_name']})"))
    return Annotations(path, "diving48_json", samples)


def scan_class_folders(root: str) -> Annotations:
    """`root/<class>/**/<file>` for videos or images; classes are the sorted folder names. A folder
    without sub-folders holds unlabelled files (label -1): enough for pretraining and tokenizers."""
    known = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    class_names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not class_names:
        files = sorted(entry.name for entry in os.scandir(root) if Path(entry.name).suffix.lower() in known)
        if not files:
            raise DataError(f"{root}: expected one sub-folder per class, or video / image files, found neither")
        return Annotations(root, "folder", [Sample(os.path.join(root, name), -1, where=root) for name in files])
    samples = []
    for label, name in enumerate(class_names):
        for folder, subfolders, files in sorted(os.walk(os.path.join(root, name))):
            subfolders.sort()
            for filename in sorted(files):
                if Path(filename).suffix.lower() in known:
                    samples.append(Sample(os.path.join(folder, filename), label, where=os.path.join(root, name)))
    if not samples:
        raise DataError(f"{root}: no video or image files in its class folders")
    return Annotations(root, "folder", samples, class_names)


def write_annotations(annotations: Annotations, samples: list[Sample], out: str) -> None:
    """Write `samples` (a subset of `annotations`) in the format they were read from. JSON and
    CSV entries are copied as they were; list files and folders become a list file whose paths
    are relative to `out`'s folder (so it works from wherever it is written, without --root)."""
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        if annotations.format in ("ssv2_json", "diving48_json"):
            json.dump([sample.record for sample in samples], handle, indent=1)
        elif annotations.format == "kinetics_csv":
            writer = csv.DictWriter(handle, fieldnames=annotations.csv_fields)
            writer.writeheader()
            writer.writerows(sample.record for sample in samples)
        else:
            handle.writelines(f"{os.path.relpath(sample.path, out_dir)} {sample.label}\n" for sample in samples)


def check_labels(source: str, samples: list[Sample], class_names: list[str] | None, num_classes: int,
                 key: str = "finetune.num_classes") -> None:
    """Every sample labelled within 0..num_classes-1, and a class list (if the annotations have
    one) of exactly `num_classes` names; otherwise a DataError naming the file and line, before a
    run is spent on data that would crash its first batch or be scored as a silent miss."""
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{source}: the annotations name {len(class_names)} classes, but {key}={num_classes}")
    for sample in samples:
        problem = label_problem(sample, num_classes, key)
        if problem:
            raise DataError(f"{sample.where or source}: {problem}")


def label_problem(sample: Sample, num_classes: int, key: str = "finetune.num_classes") -> str | None:
    """Why `sample`'s label cannot train a `num_classes`-way head, or None."""
    if sample.label < 0:
        return f"{sample.path} has no label; training and evaluation need a label for every video"
    if sample.label >= num_classes:
        return f"label {sample.label} is outside 0..{num_classes - 1} ({key}={num_classes})"
    return None


def count_classes(source: str, annotations: Annotations, key: str = "finetune.num_classes") -> int:
    """The number of classes the annotations name (class-name file, SSv2 labels, Kinetics labels,
    class folders); a list file or Diving48 json without a class-name file names none."""
    if annotations.class_names is None:
        raise DataError(f"{key}: not given, and {source} names no classes (a plain list of labels could "
                        f"miss the highest ones); set {key}, or data.labels to a file of class names")
    return len(annotations.class_names)


def _read_json(path: str, expect: type = list):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, expect):
        raise DataError(f"{path}: expected a JSON {expect.__name__}, got {type(data).__name__}")
    return data


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------

# Independent random streams of one sample, so that adding masks does not change augmentations.
_CLIP_STREAM, _AUGMENT_STREAM, _MASK_STREAM = 0, 1, 2


def sample_seed(seed: int, epoch: int, index: int, stream: int, attempt: int = 0) -> int:
    """A 63-bit seed that depends only on its arguments (not on worker or process)."""
    state = np.random.SeedSequence([seed, epoch, index, stream, attempt]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SkippingDataset(torch.utils.data.Dataset):
    """Base of bevt's datasets: seeding per sample, substitution of unreadable samples, masks.

    Keys are `(epoch, index)` pairs (what `ResumableSampler` yields) or plain indices (epoch 0).
    Subclasses implement `load(sample, clip_seed, augment_seed) -> dict of tensors`; the clip
    position is drawn from a generator made from `clip_seed` each time the reader asks for it
    (it may ask twice, when decoding corrects a video's frame count).
    `class_names` (or None) is carried for the caller, e.g. to name predictions.
    """

    def __init__(self, samples: list[Sample], *, seed: int = 0, mask_generator=None, max_consecutive_skips: int = 10,
                 class_names: list[str] | None = None):
        if not samples:
            raise DataError("the dataset is empty")
        self.samples = samples
        self.class_names = class_names
        self.seed = seed
        self.mask_generator = mask_generator
        self.max_consecutive_skips = max_consecutive_skips

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped = []
        for attempt in range(self.max_consecutive_skips + 1):
            actual_index = (index + attempt) % len(self.samples)
            sample = self.samples[actual_index]
            try:
                item = self.load(
                    sample,
                    sample_seed(self.seed, epoch, index, _CLIP_STREAM, attempt),
                    sample_seed(self.seed, epoch, index, _AUGMENT_STREAM, attempt),
                )
                break
            except UnreadableSample as err:
                skipped.append((err.path, err.reason))
        else:
            path, reason = skipped[-1]
            raise DataError(
                f"{len(skipped)} samples in a row could not be read (last: {path}: {reason}); "
                "run `bevt data check` on the annotations"
            )
        item["label"] = sample.label
        item["index"] = actual_index
        item["skipped"] = skipped
        if self.mask_generator is not None:
            item["mask"] = self.mask_generator(generator=_generator(sample_seed(self.seed, epoch, index, _MASK_STREAM)))
        return item

    def load(self, sample: Sample, clip_seed: int, augment_seed: int) -> dict:
        raise NotImplementedError


class VideoDataset(SkippingDataset):
    """Clips from videos.

    - `clip_sampler`: an `IntervalSampler` or `SegmentSampler`.
    - `transform`: `PretrainTransform` (-> "video", "video_tok"), `FinetuneTransform` or
      `EvalTransform` (-> "video").
    - `train=True`: one clip at a random position; `train=False`: `num_clips` evenly spaced
      clips decoded in one pass, each transformed, stacked on a view axis: "video" (V,3,T,H,W)
      with V = num_clips x crops.
    """

    def __init__(
        self,
        samples: list[Sample],
        clip_sampler,
        transform,
        *,
        train: bool = True,
        num_clips: int = 1,
        **kwargs,
    ):
        super().__init__(samples, **kwargs)
        self.clip_sampler = clip_sampler
        self.transform = transform
        self.train = train
        self.num_clips = num_clips

    def load(self, sample: Sample, clip_seed: int, augment_seed: int) -> dict:
        if self.train:
            frames, _ = read_clip(sample.path, lambda n: self.clip_sampler(n, _generator(clip_seed)))
            with seeded(augment_seed):
                out = self.transform(frames)
            if isinstance(out, dict):
                return {"video": out["view"], "video_tok": out["tok"]}
            return {"video": out}
        frames, _ = read_clip(
            sample.path, lambda n: views_to_indices(self.clip_sampler.test_views(n, self.num_clips))
        )
        with seeded(augment_seed):
            views = [self.transform(clip) for clip in np.split(frames, self.num_clips)]
        return {"video": torch.cat(views)}


class ImageDataset(SkippingDataset):
    """Images for the image stream: `transform` is a `PretrainTransform` (with colour jitter);
    yields "image" (3,H,W) and "image_tok" (3,H/2,W/2).

    A video sample gives one of its frames, drawn uniformly anew each epoch (from the sample's
    seed, so a resumed run draws the same): the paper's Table 7 variant that feeds the image
    stream with frames of the training videos instead of ImageNet."""

    def __init__(self, samples: list[Sample], transform, **kwargs):
        super().__init__(samples, **kwargs)
        self.transform = transform

    def load(self, sample: Sample, clip_seed: int, augment_seed: int) -> dict:
        if Path(sample.path).suffix.lower() in VIDEO_EXTENSIONS:
            frames, _ = read_clip(sample.path, lambda n: [int(torch.randint(n, (1,), generator=_generator(clip_seed)))])
            pixels = frames[0]
        else:
            pixels = read_image(sample.path)
        with seeded(augment_seed):
            out = self.transform(pixels[None])
        return {"image": out["view"][:, 0], "image_tok": out["tok"][:, 0]}


def read_image(path: str) -> np.ndarray:
    """uint8 (H,W,3) RGB, or `UnreadableSample` with a reason."""
    check_readable_file(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableSample(path, f"undecodable: {err}") from None


def collate(items: list[dict]) -> dict:
    """Stack tensors, make "label"/"index" long tensors, concatenate the "skipped" lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "skipped":
            batch[key] = [entry for value in values for entry in value]
        elif key in ("label", "index"):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = torch.stack(values)
    return batch


# ----------------------------------------------------------------------------------------------
# Skip accounting (main process)
# ----------------------------------------------------------------------------------------------


class SkipCounter:
    """Tallies the samples that datasets skipped, logs each, and fails the run with a clear
    message once the skipped share of an epoch passes `max_skip_fraction` (checked as soon as
    `min_samples` were attempted, and always at the end of the epoch)."""

    def __init__(self, max_skip_fraction: float = 0.05, min_samples: int = 100):
        self.max_skip_fraction = max_skip_fraction
        self.min_samples = min_samples
        self.delivered = 0
        self.skipped: list[tuple[str, str]] = []

    @property
    def fraction(self) -> float:
        attempted = self.delivered + len(self.skipped)
        return len(self.skipped) / attempted if attempted else 0.0

    def update(self, batch: dict) -> None:
        """Count one batch (its "index" entries were delivered, its "skipped" ones were not)."""
        self.delivered += len(batch["index"])
        for path, reason in batch["skipped"]:
            log.warning("skipped %s: %s", path, reason)
        self.skipped.extend(batch["skipped"])
        if self.delivered + len(self.skipped) >= self.min_samples:
            self._check()

    def _check(self) -> None:
        if self.fraction > self.max_skip_fraction:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self._by_kind().most_common())
            raise DataError(
                f"{len(self.skipped)} of {self.delivered + len(self.skipped)} samples this epoch could not be read "
                f"({self.fraction:.1%} > data.max_skip_fraction={self.max_skip_fraction:.1%}): {kinds}. "
                "Run `bevt data check <annotations> --write-clean <out>` and train on the clean list."
            )

    def _by_kind(self) -> Counter:
        return Counter(reason.split(":", 1)[0] for _, reason in self.skipped)

    def end_epoch(self, epoch: int, out_dir: str | None = None, rank: int = 0) -> dict:
        """Check the threshold, write `skipped_epoch<N>[_rank<R>].json` into `out_dir`, reset."""
        summary = {
            "epoch": epoch,
            "delivered": self.delivered,
            "skipped": len(self.skipped),
            "fraction": self.fraction,
            "by_kind": dict(self._by_kind()),
            "files": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            suffix = f"_rank{rank}" if rank else ""
            with open(os.path.join(out_dir, f"skipped_epoch{epoch:03d}{suffix}.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
        if self.skipped:
            log.info("epoch %d: skipped %d of %d samples (%.2f%%)", epoch, len(self.skipped),
                     self.delivered + len(self.skipped), 100 * self.fraction)
        try:
            self._check()
        finally:
            self.delivered = 0
            self.skipped = []
        return summary
