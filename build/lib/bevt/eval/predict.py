"""`bevt predict VIDEO|FOLDER... --checkpoint CKPT`: the top-k classes of video files.

Each video is read with the checkpoint's own test protocol (its config's frames, sampling, size,
clips and crops), and the softmax is averaged over the views as in `bevt evaluate`. Class names
come from the classes.json that finetuning writes into every checkpoint (the names of the
training annotations); without one the classes are shown by index. A folder stands for the
videos in it (recursively); a file that cannot be read is reported and the others still run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bevt.data.datasets import VIDEO_EXTENSIONS, Sample, VideoDataset
from bevt.data.decode import UnreadableSample
from bevt.data.loader import clip_sampler
from bevt.data.transforms import EvalTransform
from bevt.errors import DataError, UsageError
from bevt.eval.classify import load_classifier, view_probabilities
from bevt.checkpoint import read_class_names, resolve_checkpoint
from bevt.distributed import pick_device


def expand_videos(paths: list[str]) -> list[str]:
    """Files as given (in order); a folder -> its video files, sorted. An empty folder is an error."""
    videos = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            if not found:
                raise DataError(f"{path}: a folder without videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
            videos += found
        else:
            videos.append(str(path))
    return videos


@torch.no_grad()
def predict(videos: list[str], checkpoint: str | Path, top_k: int = 5, device: str = "auto") -> list[dict]:
    """-> per video, in order: {"video": path, "top": [{"label", "index", "probability"}, ...]}
    (best first), or {"video": path, "error": reason} for a file that cannot be read."""
    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be >= 1")
    run_device = pick_device(device)
    model, cfg = load_classifier(checkpoint, run_device)
    names = read_class_names(resolve_checkpoint(checkpoint))
    reader = VideoDataset(
        [Sample(video, -1) for video in expand_videos(videos)],
        clip_sampler(cfg.data),
        EvalTransform(cfg.data.size, cfg.eval.crops),
        train=False,
        num_clips=cfg.eval.clips,
    )
    results = []
    for sample in reader.samples:
        try:
            views = reader.load(sample, None, 0)["video"].to(run_device)  # (V,3,T,H,W)
        except UnreadableSample as err:
            results.append({"video": sample.path, "error": err.reason})
            continue
        probs = view_probabilities(model, views, len(views), cfg.run.precision, run_device)[0]
        best = probs.topk(min(top_k, len(probs)))
        top = [
            {"label": names[i] if names else str(i), "index": i, "probability": p}
            for p, i in zip(best.values.tolist(), best.indices.tolist())
        ]
        results.append({"video": sample.path, "top": top})
    return results


def run_predict(args) -> int:
    """Prints every readable video's classes; exits 1 when some files could not be read."""
    results = predict(args.videos, args.checkpoint, top_k=args.top_k)
    failed = [r for r in results if "error" in r]
    if len(failed) == len(results):
        raise DataError(f"none of the {len(results)} videos could be read; first: {failed[0]['video']}: "
                        f"{failed[0]['error']}")
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for result in results:
            if "error" in result:
                continue
            print(result["video"])
            for rank, entry in enumerate(result["top"], start=1):
                print(f"  {rank}. {entry['label']:<40} {100 * entry['probability']:5.1f}%")
    for result in failed:
        print(f"bevt predict: cannot read {result['video']}: {result['error']}", file=sys.stderr)
    return 1 if failed else 0
