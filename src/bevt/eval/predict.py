"""`bevt predict VIDEO... --checkpoint CKPT`: the top-k classes of video files.

Each video is read with the checkpoint's own test protocol (its config's frames, sampling, size,
clips and crops), and the softmax is averaged over the views as in `bevt evaluate`. Class names
come from the classes.json that finetuning writes into every checkpoint (the names of the
training annotations); without one the classes are shown by index.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bevt.data.datasets import Sample, VideoDataset
from bevt.data.loader import clip_sampler
from bevt.data.transforms import EvalTransform
from bevt.errors import DataError
from bevt.eval.classify import load_classifier, view_probabilities
from bevt.checkpoint import read_class_names, resolve_checkpoint
from bevt.distributed import pick_device


@torch.no_grad()
def predict(videos: list[str], checkpoint: str | Path, top_k: int = 5, device: str = "auto") -> list[dict]:
    """-> [{"video": path, "top": [{"label", "index", "probability"}, ...]}] per video, best first."""
    run_device = pick_device(device)
    model, cfg = load_classifier(checkpoint, run_device)
    names = read_class_names(resolve_checkpoint(checkpoint))
    for video in videos:
        if not Path(video).is_file():
            raise DataError(f"video not found: {video}")
    reader = VideoDataset(
        [Sample(str(video), -1) for video in videos],
        clip_sampler(cfg.data),
        EvalTransform(cfg.data.size, cfg.eval.crops),
        train=False,
        num_clips=cfg.eval.clips,
    )
    results = []
    for sample in reader.samples:
        views = reader.load(sample, None, 0)["video"].to(run_device)  # (V,3,T,H,W)
        probs = view_probabilities(model, views, len(views), cfg.run.precision, run_device)[0]
        best = probs.topk(min(top_k, len(probs)))
        top = [
            {"label": names[i] if names else str(i), "index": i, "probability": p}
            for p, i in zip(best.values.tolist(), best.indices.tolist())
        ]
        results.append({"video": sample.path, "top": top})
    return results


def run_predict(args) -> int:
    results = predict(args.videos, args.checkpoint, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for result in results:
        print(result["video"])
        for rank, entry in enumerate(result["top"], start=1):
            print(f"  {rank}. {entry['label']:<40} {100 * entry['probability']:5.1f}%")
    return 0
