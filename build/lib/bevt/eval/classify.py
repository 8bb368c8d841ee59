"""`bevt evaluate`: multi-view top-1 / top-5 and the temporal dependency test.

Each video is seen as `eval.clips` clips x `eval.crops` crops; the softmax of every view is
averaged before ranking (the paper's protocol: 4 x 3 views on K400, 1 x 3 on SSv2). With the
temporal test the same views are also scored single-frame and frame-shuffled (temporal.py).
Under torchrun the videos are split over ranks and the counts summed.

The protocol (frames, sampling, size, clips, crops) and the test annotations come from the
checkpoint's own saved config, so a model is scored the way it was trained to be; a `--config`
recipe and key=value overrides replace what they name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from bevt.config import Config, apply_override, config_from_dict, config_to_dict, read_recipe
from bevt.data.datasets import check_labels
from bevt.data.loader import build_eval_loader
from bevt.errors import CheckpointError, DataError, check_writable
from bevt.eval.temporal import MODES, apply_mode
from bevt.checkpoint import read_config, resolve_checkpoint
from bevt.models.build import load_model_from_checkpoint
from bevt.distributed import autocast, init_distributed, pick_device, rank_and_world_size, shutdown, sum_over_ranks


log = logging.getLogger(__name__)

MODE_TITLES = {"normal": "Normal", "single_frame": "Single-frame", "shuffled": "Random-shuffling"}


def load_classifier(checkpoint: str | Path, device: torch.device):
    """A finetuned checkpoint's classifier on `device`, in eval mode."""
    model, model_cfg = load_model_from_checkpoint(checkpoint)
    if model_cfg.task != "finetune":
        raise CheckpointError(f"{checkpoint} is a pretraining checkpoint; evaluate and predict need a finetuned one")
    return model.to(device), model_cfg


def view_probabilities(model, clips: torch.Tensor, views: int, precision: str, device: torch.device) -> torch.Tensor:
    """(B*V,3,T,H,W) clips -> (B,K) class probabilities averaged over each video's V views."""
    with autocast(precision, device):
        logits = model(clips)
    return logits.float().softmax(-1).view(-1, views, logits.shape[-1]).mean(1)


@torch.no_grad()
def evaluate(cfg: Config, checkpoint: str | Path, temporal_test: bool = False, out_dir: str | Path | None = None) -> dict:
    """Top-1 / top-5 (percent) of `checkpoint` on `cfg.data.val`, per test mode.

    Returns {"checkpoint", "annotations", "videos", "unreadable", "views", "results": {mode: {"top1", "top5"}}};
    unreadable videos are logged and left out of the accuracies.
    and, with `out_dir`, writes it as results.json and a results.md table there (rank 0).
    """
    device = pick_device(cfg.run.device)
    model, model_cfg = load_classifier(checkpoint, device)
    rank, world_size = rank_and_world_size()
    loader = build_eval_loader(cfg.data, cfg.eval, rank=rank, world_size=world_size)
    check_labels(cfg.data.val, loader.dataset.samples, loader.dataset.class_names, model_cfg.finetune.num_classes,
                 key="the checkpoint's finetune.num_classes")
    modes = MODES if temporal_test else ("normal",)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    hits = torch.zeros(len(modes), 2, dtype=torch.float64, device=device)  # (mode, top-1 / top-5)
    videos = torch.zeros((), dtype=torch.float64, device=device)
    unreadable = {}  # path -> reason
    scored = set()  # the dataset stands in the next video for an unreadable one: score each video once
    for batch in tqdm(loader, desc="evaluate", dynamic_ncols=True, disable=loader.sampler.rank > 0):
        for path, reason in batch["skipped"]:
            if path not in unreadable:
                log.warning("evaluation leaves out %s: %s", path, reason)
            unreadable[path] = reason
        fresh = torch.zeros(len(batch["index"]), dtype=torch.bool)
        for position, index in enumerate(batch["index"].tolist()):
            fresh[position] = index not in scored
            scored.add(index)
        if not fresh.any():
            continue
        label = batch["label"][fresh].to(device)
        video = batch["video"][fresh].to(device)  # (B,V,3,T,H,W)
        for i, mode in enumerate(modes):
            clips = apply_mode(mode, video.flatten(0, 1), generator)
            probs = view_probabilities(model, clips, video.shape[1], cfg.run.precision, device)
            top = probs.topk(min(5, probs.shape[-1]), dim=-1).indices
            hits[i, 0] += (top[:, 0] == label).sum()
            hits[i, 1] += (top == label[:, None]).any(dim=-1).sum()
        videos += len(label)
    hits, videos, unreadable = sum_over_ranks(hits), int(sum_over_ranks(videos)), int(sum_over_ranks(torch.tensor(float(len(unreadable)), device=device)))
    if videos == 0:
        raise DataError(f"{cfg.data.val}: none of the {unreadable} videos could be read")
    out = {
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "annotations": cfg.data.val,
        "videos": videos,
        "unreadable": unreadable,
        "views": f"{cfg.eval.clips} clips x {cfg.eval.crops} crops",
        "results": {mode: {"top1": 100 * float(hits[i, 0]) / videos, "top5": 100 * float(hits[i, 1]) / videos}
                    for i, mode in enumerate(modes)},
    }
    if out_dir is not None and loader.sampler.rank == 0:
        write_results(out, Path(out_dir))
    return out


def results_table(out: dict) -> str:
    """The results as a markdown table, with what was evaluated above it."""
    lines = [
        f"Checkpoint `{out['checkpoint']}` on `{out['annotations']}`: {out['videos']} videos, {out['views']}"
        + (f" ({out['unreadable']} unreadable videos left out)." if out.get("unreadable") else "."),
        "",
        "| test | top-1 | top-5 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {MODE_TITLES[mode]} | {r['top1']:.1f} | {r['top5']:.1f} |" for mode, r in out["results"].items()]
    return "\n".join(lines) + "\n"


def write_results(out: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    (out_dir / "results.md").write_text(results_table(out))


def evaluation_config(checkpoint: str | Path, recipe: str | None = None, overrides=()) -> Config:
    """The checkpoint's saved config, with the keys a `recipe` sets and the `overrides` replaced."""
    raw = config_to_dict(read_config(resolve_checkpoint(checkpoint)))
    if recipe is not None:
        _merge(raw, read_recipe(recipe))
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def run_evaluate(args) -> int:
    """CLI: `bevt evaluate --checkpoint CKPT [--config CFG] [--out DIR] [--temporal-test] [key=value ...]`."""
    cfg = evaluation_config(args.checkpoint, args.config, args.overrides)
    out_dir = Path(args.out) if args.out else resolve_checkpoint(args.checkpoint) / "eval"
    check_writable(out_dir, "--out", folder=True)
    env = init_distributed(cfg.run.device)
    try:
        out = evaluate(cfg, args.checkpoint, temporal_test=args.temporal_test, out_dir=out_dir)
    finally:
        shutdown()
    if env.is_main:
        print(results_table(out), end="")
        print(f"written to {out_dir}/results.json and results.md")
    return 0
