"""`bevt embed VIDEO|LIST --checkpoint RUN --out FILE.safetensors`: one pooled encoder feature per clip.

The feature is the encoder's pooled output (final norm on stage 4, averaged over positions) of
each view the checkpoint's own test protocol takes (its config's frames, sampling, size,
`eval.clips` x `eval.crops`), averaged over the views: the input a linear probe or a retrieval
index reads. Pretraining and finetuned checkpoints both work (the encoder of either); an
image-stream (stage 1) checkpoint is inflated 2D -> 3D first, as finetuning from it does, since
its video patch embedding was never trained.

The file holds `features` (N,C) float32, `labels` (N,) int64 (-1 where the annotations have
none) and, in its metadata, `paths` (a JSON list, row order), the checkpoint and the views.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from bevt.checkpoint import resolve_checkpoint
from bevt.config import Config
from bevt.data.datasets import Sample, VideoDataset, collate, load_annotations
from bevt.data.loader import clip_sampler
from bevt.data.transforms import EvalTransform
from bevt.distributed import autocast, pick_device
from bevt.errors import DataError
from bevt.eval.temporal import apply_mode
from bevt.models.build import load_model_from_checkpoint, window_of
from bevt.models.convert import inflate_image_checkpoint

log = logging.getLogger(__name__)

# An input with one of these suffixes (or a folder) is an annotation file; anything else a video.
ANNOTATION_SUFFIXES = {".txt", ".csv", ".json", ".list"}


def load_encoder(checkpoint: str | Path) -> tuple[nn.Module, Config]:
    """(encoder in eval mode, the checkpoint's config) of a pretraining or finetuned checkpoint."""
    model, cfg = load_model_from_checkpoint(checkpoint)
    encoder = model.encoder
    if cfg.task == "pretrain" and cfg.pretrain.streams == "image":
        encoder.load_state_dict(inflate_image_checkpoint(encoder.state_dict(), window_of(encoder)))
    return encoder.eval(), cfg


def read_inputs(inputs: list[str]) -> list[Sample]:
    """Samples of one annotation file / folder, or of video files given one by one (label -1)."""
    if len(inputs) == 1 and (Path(inputs[0]).is_dir() or Path(inputs[0]).suffix.lower() in ANNOTATION_SUFFIXES):
        return load_annotations(inputs[0]).samples
    for video in inputs:
        if not Path(video).is_file():
            raise DataError(f"video not found: {video}")
    return [Sample(str(video), -1) for video in inputs]


@torch.no_grad()
def view_outputs(fn, samples: list[Sample], cfg: Config, modes: tuple[str, ...] = ("normal",),
                 seed: int = 0, device: torch.device | None = None) -> dict:
    """`fn` on every test view of every sample, averaged over each sample's views.

    `fn` maps (B*V,3,T,H,W) clips to (B*V,D). With several `modes` (temporal.py: normal,
    single_frame, shuffled) every view is also presented that way, from one generator seeded
    with `seed` as `bevt evaluate` does. Unreadable videos are logged and left out.
    -> {"outputs": {mode: (N,D) float32}, "labels": (N,), "paths": [N], "unreadable": {path: reason}}.
    """
    device = device or torch.device("cpu")
    dataset = VideoDataset(samples, clip_sampler(cfg.data), EvalTransform(cfg.data.size, cfg.eval.crops),
                           train=False, num_clips=cfg.eval.clips)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size, num_workers=cfg.data.workers,
                                         collate_fn=collate)
    generator = torch.Generator().manual_seed(seed)
    outputs = {mode: [] for mode in modes}
    labels, paths, unreadable, seen = [], [], {}, set()
    for batch in tqdm(loader, desc="embed", dynamic_ncols=True, leave=False):
        for path, reason in batch["skipped"]:
            if path not in unreadable:
                log.warning("left out %s: %s", path, reason)
            unreadable[path] = reason
        # the dataset stands in the next video for an unreadable one: take each video once
        fresh = torch.tensor([i not in seen for i in batch["index"].tolist()], dtype=torch.bool)
        seen.update(batch["index"].tolist())
        if not fresh.any():
            continue
        video = batch["video"][fresh].to(device)  # (B,V,3,T,H,W)
        for mode in modes:
            clips = apply_mode(mode, video.flatten(0, 1), generator)
            with autocast(cfg.run.precision, device):
                out = fn(clips)
            outputs[mode].append(out.float().view(video.shape[0], video.shape[1], -1).mean(1).cpu())
        labels.append(batch["label"][fresh])
        paths += [samples[i].path for i in batch["index"][fresh].tolist()]
    if not paths:
        raise DataError(f"none of the {len(samples)} videos could be read")
    return {"outputs": {mode: torch.cat(rows) for mode, rows in outputs.items()}, "labels": torch.cat(labels),
            "paths": paths, "unreadable": unreadable}


def embed(checkpoint: str | Path, samples: list[Sample], modes: tuple[str, ...] = ("normal",),
          cfg: Config | None = None, device: str = "cpu") -> dict:
    """Pooled encoder features of `samples` (see `view_outputs`) with the test views of `cfg`
    (default: the checkpoint's own config), plus "checkpoint" and "views"."""
    encoder, own = load_encoder(checkpoint)
    cfg = cfg or own
    run_device = pick_device(device)
    out = view_outputs(encoder.to(run_device), samples, cfg, modes, seed=cfg.run.seed, device=run_device)
    return {**out, "checkpoint": str(resolve_checkpoint(checkpoint)), "views": views_of(cfg)}


def views_of(cfg: Config) -> str:
    return f"{cfg.eval.clips} clips x {cfg.eval.crops} crops of {cfg.data.frames} frames at {cfg.data.size} px"


def with_loader_settings(cfg: Config, batch_size: int | None, workers: int | None) -> Config:
    """`cfg` with another evaluation batch size / worker count (None keeps the config's)."""
    if batch_size is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, batch_size=batch_size))
    if workers is not None:
        cfg = replace(cfg, data=replace(cfg.data, workers=workers))
    return cfg


def save_features(result: dict, path: str | Path, mode: str = "normal") -> None:
    """`features`, `labels` and the paths (metadata, JSON) of one mode of an `embed` result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"paths": json.dumps(result["paths"]), "checkpoint": result.get("checkpoint", ""),
                "views": result.get("views", ""), "mode": mode}
    save_file({"features": result["outputs"][mode].contiguous(), "labels": result["labels"].contiguous()},
              str(path), metadata=metadata)


def load_features(path: str | Path) -> dict:
    """-> {"features", "labels", "paths", "checkpoint", "views", "mode"} of a file `bevt embed` wrote."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {**tensors, **metadata, "paths": json.loads(metadata.get("paths", "[]"))}


def run_embed(args) -> int:
    """CLI: `bevt embed VIDEO... | LIST --checkpoint RUN --out FILE.safetensors`."""
    if not str(args.out).endswith(".safetensors"):
        raise DataError(f"--out {args.out}: give a .safetensors file")
    _, own = load_encoder(args.checkpoint)
    cfg = with_loader_settings(own, args.batch_size, args.workers)
    result = embed(args.checkpoint, read_inputs(args.inputs), cfg=cfg, device=args.device)
    save_features(result, args.out)
    features = result["outputs"]["normal"]
    print(f"{features.shape[0]} clips x {features.shape[1]} features ({result['views']} averaged) -> {args.out}"
          + (f"; {len(result['unreadable'])} unreadable videos left out" if result["unreadable"] else ""))
    return 0
