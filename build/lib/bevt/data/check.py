"""`bevt data check`: find what training would skip or misread, before a multi-day run does.

Every video is checked the way training reads it, in parallel processes:

- it is decoded whole once, as a player shows it (frame count, and every frame's pixels hashed);
  a stream that fails part-way is reported (training would skip the clips that reach the break);
- every clip position the sampler can draw is read with bevt's reader and compared, frame by
  frame, with that whole-file decode. Clips are grouped by the keyframe the reader seeks to,
  and one read per group covers all of the group's clips (decoding forward from a keyframe is
  the same whatever clip asks for it), so the check costs a few decodes per video;
- timestamps that are missing, repeated or out of order are noted (not failures: such files are
  decoded from the start, which is slower but right).

`--fast` keeps the old probe instead: one centred clip per video. Labels are checked against the
class count (`finetune.num_classes` of `--config`, else the class list). With `--config RECIPE`
(+ `key=value` overrides) the recipe's annotations, root, labels and clip sampler are used.
Prints how many samples are fine and every bad one with its reason; exits 1 if any failed.
`--write-clean OUT` writes the annotations without them, in the format they came in; OUT is
checked writable before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bevt.config import DataConfig, load_config
from bevt.data import decode
from bevt.data.datasets import (
    IMAGE_EXTENSIONS, Sample, count_classes, label_problem, load_annotations, read_image, write_annotations,
)
from bevt.data.decode import UnreadableSample, read_clip
from bevt.data.loader import clip_sampler as recipe_sampler
from bevt.errors import ConfigError, DataError, UsageError


@dataclass
class Finding:
    """What the check found about one sample: `reason` it cannot be used (None when it can),
    and `notes` that do not stop training."""

    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def check_sample(job: tuple[Sample, object, bool]) -> Finding:
    sample, sampler, fast = job
    try:
        if Path(sample.path).suffix.lower() in IMAGE_EXTENSIONS:
            read_image(sample.path)
            return Finding()
        if fast:
            read_clip(sample.path, sampler)
            return Finding()
        return check_video(sample.path, sampler)
    except UnreadableSample as err:
        return Finding(err.reason)
    except Exception as err:  # a diagnostic tool reports any failure instead of stopping on it
        return Finding(f"error: {type(err).__name__}: {err}")


def check_video(path: str, sampler) -> Finding:
    """Whole-file decode, then every clip position `sampler` can draw read as training reads it."""
    scan = decode.scan_video(path)
    finding = Finding(notes=timestamp_notes(scan.pts))
    counted = []
    decode.forget(path)
    read_clip(path, lambda n: counted.append(n) or [0])
    if counted[0] != scan.num_frames:
        finding.notes.append(f"the packets promise {counted[0]} frames, {scan.num_frames} decode "
                             "(reads that meet the difference decode from the start)")
    try:
        spans = sampler.reachable(scan.num_frames)
    except ValueError as err:
        return Finding(f"too short: {err}", finding.notes)
    for first, last in read_groups(path, spans):
        decode.forget(path)  # read as a fresh worker process would
        wanted = list(range(first, last + 1))
        try:
            frames, _ = read_clip(path, lambda n: wanted)
        except UnreadableSample as err:
            return Finding(f"{err.reason} (clips from frame {first})", finding.notes)
        for i, frame in zip(wanted, frames):
            if decode.frame_hash(frame) != scan.hashes[i]:
                return Finding(f"error: frame {i} read from frame {first} on differs from a whole-file decode "
                               "(a bevt reader bug: please report it with the file)", finding.notes)
    return finding


def read_groups(path: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One (first, last) read per keyframe the reader would seek to for these clips, covering all
    of their frames (a stream decoded from the start is one group)."""
    with decode.open_video(path) as container:
        index = decode.index_packets(container, path)
    if not index.seekable:
        return [(min(f for f, _ in spans), max(last for _, last in spans))]
    groups = {}
    for first, last in spans:
        keyframe = int(np.searchsorted(index.keyframe_pts, index.pts[first], side="right"))
        low, high = groups.get(keyframe, (first, last))
        groups[keyframe] = (min(low, first), max(high, last))
    return list(groups.values())


def timestamp_notes(pts: list) -> list[str]:
    missing = sum(p is None for p in pts)
    known = [p for p in pts if p is not None]
    repeated = len(known) - len(set(known))
    backwards = sum(b < a for a, b in zip(known, known[1:]))
    if not (missing or repeated or backwards):
        return []
    parts = [f"{n} {what}" for n, what in ((missing, "missing"), (repeated, "repeated"), (backwards, "out of order"))
             if n]
    return [f"timestamps: {', '.join(parts)}; frames are taken in decoding order from the start (slower)"]


def check_samples(samples: list[Sample], sampler, workers: int = 4, fast: bool = False) -> list[Finding]:
    """What the check finds for each sample, with a progress bar."""
    jobs = [(sample, sampler, fast) for sample in samples]
    bar = dict(total=len(jobs), desc="checking", unit="sample", file=sys.stderr)
    if workers <= 1:
        return [check_sample(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(check_sample, jobs, chunksize=4), **bar))


def check_writable(out: str) -> None:
    """Fail now, not after the whole check, when `--write-clean OUT` cannot be written."""
    folder = os.path.dirname(os.path.abspath(out))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise DataError(f"--write-clean {out}: {existing} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        if os.path.isdir(out) or (os.path.exists(out) and not os.access(out, os.W_OK)):
            raise PermissionError("not a writable file")
    except OSError as err:
        raise DataError(f"--write-clean {out}: cannot write there ({err.strerror or err})") from None


def settings(args) -> tuple[str, DataConfig, int | None]:
    """(annotations, data settings, class count or None) from `--config` + overrides and the options."""
    overrides = [item for item in args.items if _is_override(item)]
    paths = [item for item in args.items if not _is_override(item)]
    if len(paths) > 1:
        raise UsageError(f"one annotation file or folder, got {len(paths)}: {' '.join(paths)}")
    if overrides and not args.config:
        raise UsageError(f"overrides ({' '.join(overrides)}) need --config RECIPE")
    cfg = load_config(args.config, overrides) if args.config else None
    options = {name: getattr(args, name) for name in ("root", "labels", "frames", "interval", "sampling")}
    given = {name: value for name, value in options.items() if value is not None}
    try:
        data = dataclasses.replace(cfg.data if cfg else DataConfig(), **given)
    except ConfigError as err:
        raise ConfigError(f"--{err}") from None  # "--frames: must be even ..."
    path = paths[0] if paths else data.train
    if path is None:
        raise UsageError("name the annotations to check, or a --config whose data.train names them")
    num_classes = cfg.finetune.num_classes if cfg and cfg.task == "finetune" else None
    if cfg and cfg.task == "pretrain":
        data = dataclasses.replace(data, sampling="interval")  # pretraining always samples at an interval
    return path, data, num_classes


def _is_override(item: str) -> bool:
    key = item.split("=", 1)[0]
    return "=" in item and "." in key and "/" not in key and not os.path.exists(item)


def run_check(args) -> int:
    path, data, num_classes = settings(args)
    if args.write_clean:
        check_writable(args.write_clean)
    annotations = load_annotations(path, root=data.root, labels=data.labels)
    problems = []  # whole-file problems, printed after the per-sample ones
    if num_classes is not None and annotations.class_names is not None and len(annotations.class_names) != num_classes:
        problems.append(f"{path}: the annotations name {len(annotations.class_names)} classes, "
                        f"but finetune.num_classes={num_classes}")
    elif num_classes is None and annotations.class_names is not None:
        num_classes = count_classes(path, annotations)
    sampler = recipe_sampler(data)
    findings = check_samples(annotations.samples, sampler, args.workers, fast=args.fast)
    for sample, finding in zip(annotations.samples, findings):
        wrong_label = label_problem(sample, num_classes) if num_classes is not None else None
        if wrong_label and not finding.reason:
            finding.reason = f"label: {wrong_label} ({sample.where})"
    bad = [(sample, finding.reason) for sample, finding in zip(annotations.samples, findings) if finding.reason]
    total = len(annotations.samples)
    what = "one centred clip each" if args.fast else "every clip position of the sampler"
    print(f"{total - len(bad)} of {total} samples OK, {len(bad)} unreadable or mislabelled ({what})")
    for sample, reason in bad:
        print(f"  {sample.path}: {reason}")
    noted = [(sample, note) for sample, finding in zip(annotations.samples, findings) for note in finding.notes]
    if noted:
        print(f"notes on {len({sample.path for sample, _ in noted})} readable files:")
        for sample, note in noted:
            print(f"  {sample.path}: {note}")
    for problem in problems:
        print(problem)
    if args.write_clean:
        good = [sample for sample, finding in zip(annotations.samples, findings) if not finding.reason]
        write_annotations(annotations, good, args.write_clean)
        print(f"wrote {len(good)} readable samples to {args.write_clean}")
    return 1 if bad or problems else 0
