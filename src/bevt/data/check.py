"""`bevt data check`: find the unreadable samples of a dataset before a multi-day run does.

Each sample is read the way training reads it (one centred clip of `--frames` frames at
`--interval`, or the image), in parallel processes. Prints how many are fine and every bad one
with its reason; exits 1 if any failed. `--write-clean OUT` writes the annotations without them,
in the format they came in.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from bevt.data.datasets import IMAGE_EXTENSIONS, Sample, load_annotations, read_image, write_annotations
from bevt.data.decode import UnreadableSample, read_clip
from bevt.data.sampling import IntervalSampler


def check_sample(job: tuple[Sample, IntervalSampler]) -> str | None:
    """None if the sample reads, else the reason it does not."""
    sample, clip_sampler = job
    try:
        if Path(sample.path).suffix.lower() in IMAGE_EXTENSIONS:
            read_image(sample.path)
        else:
            read_clip(sample.path, clip_sampler)
    except UnreadableSample as err:
        return err.reason
    except Exception as err:  # a diagnostic tool reports any failure instead of stopping on it
        return f"error: {type(err).__name__}: {err}"
    return None


def check_samples(samples: list[Sample], clip_sampler: IntervalSampler, workers: int = 4) -> list[str | None]:
    """The reason each sample cannot be read (None when it can), with a progress bar."""
    jobs = [(sample, clip_sampler) for sample in samples]
    bar = dict(total=len(jobs), desc="checking", unit="sample", file=sys.stderr)
    if workers <= 1:
        return [check_sample(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(check_sample, jobs, chunksize=8), **bar))


def run_check(args) -> int:
    annotations = load_annotations(args.path, root=args.root, labels=args.labels)
    reasons = check_samples(annotations.samples, IntervalSampler(args.frames, args.interval), args.workers)
    bad = [(sample, reason) for sample, reason in zip(annotations.samples, reasons) if reason]
    total = len(annotations.samples)
    print(f"{total - len(bad)} of {total} samples OK, {len(bad)} unreadable")
    for sample, reason in bad:
        print(f"  {sample.path}: {reason}")
    if args.write_clean:
        good = [sample for sample, reason in zip(annotations.samples, reasons) if not reason]
        write_annotations(annotations, good, args.write_clean)
        print(f"wrote {len(good)} readable samples to {args.write_clean}")
    return 1 if bad else 0
