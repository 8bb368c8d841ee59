"""`bevt evaluate --linear-probe`: a linear classifier on frozen encoder features.

The encoder's pooled features (embed.py: the checkpoint's test views, averaged) of the training
split are standardised with their own mean and deviation, and a multinomial logistic regression
with a small L2 penalty is fitted to them by full-batch L-BFGS from zero weights in float64: the
fit is deterministic (no seed, no batches) and takes seconds on a CPU for thousands of clips. The
validation split goes through the same standardisation and classifier; with the temporal test its
single-frame and shuffled features do too, so the probe reads how much the frozen features carry
motion. A probe measures what pretraining put into the features without the variance of a
finetuning run; finetuning stays the paper's protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bevt.checkpoint import resolve_checkpoint
from bevt.config import Config, load_config
from bevt.data.datasets import load_annotations
from bevt.errors import ConfigError, DataError
from bevt.distributed import pick_device
from bevt.eval.embed import load_encoder, view_outputs, views_of
from bevt.eval.temporal import MODES

DEFAULT_L2 = 1e-3  # penalty on the mean cross-entropy: weight_decay-like, per unit-variance feature
MAX_ITERATIONS = 500


@dataclass
class LinearProbe:
    """Standardisation (train mean / deviation) and a linear layer: features -> logits."""

    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    weight: torch.Tensor  # (K,C)
    bias: torch.Tensor  # (K,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.std
        return x @ self.weight.T + self.bias


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = DEFAULT_L2,
                     max_iterations: int = MAX_ITERATIONS) -> LinearProbe:
    """Multinomial logistic regression on standardised (N,C) `features`, by L-BFGS."""
    if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
        raise DataError(f"{features.shape[0]} feature rows for {labels.shape[0]} labels")
    if (labels < 0).any() or (labels >= num_classes).any():
        raise DataError(f"the linear probe needs labels in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    x = features.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    targets = F.one_hot(labels, num_classes).double()

    def objective():
        """Cross-entropy + L2 and its gradient in closed form: (softmax - one-hot) of the logits
        gives both, so evaluation needs no autograd (training's loop is the only backward)."""
        with torch.no_grad():
            logits = x @ weight.T + bias
            residual = (logits.softmax(1) - targets) / len(x)  # (N,K): d(mean cross-entropy)/d(logits)
            weight.grad = residual.T @ x + l2 * weight
            bias.grad = residual.sum(0)
            return F.cross_entropy(logits, labels) + 0.5 * l2 * weight.pow(2).sum()

    optimizer.step(objective)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def score(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 / top-5 in percent, and each row's top-1 correctness (for paired comparisons)."""
    logits = probe.logits(features)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct = top[:, 0] == labels
    return {"top1": 100 * correct.double().mean().item(),
            "top5": 100 * (top == labels[:, None]).any(1).double().mean().item(),
            "correct": correct.tolist()}


def probe_features(train: dict, val: dict, num_classes: int, l2: float = DEFAULT_L2) -> dict:
    """Fit on `train`'s normal features, score every mode of `val` (`view_outputs` results)."""
    probe = fit_linear_probe(train["outputs"]["normal"], train["labels"], num_classes, l2)
    fitted = score(probe, train["outputs"]["normal"], train["labels"])
    return {"train_top1": fitted["top1"], "train_videos": len(train["labels"]), "videos": len(val["labels"]),
            "results": {mode: score(probe, features, val["labels"]) for mode, features in val["outputs"].items()}}


def linear_probe(cfg: Config, checkpoint: str | Path, temporal_test: bool = False, l2: float = DEFAULT_L2) -> dict:
    """Probe `checkpoint`'s frozen encoder: fit on `cfg.data.train`, score on `cfg.data.val`
    (normal, and single-frame / shuffled with `temporal_test`). The views, frames and size are
    those of `cfg` (the evaluation config), as in `bevt evaluate`."""
    for key in ("train", "val"):
        if getattr(cfg.data, key) is None:
            raise ConfigError(f"data.{key}: is required for the linear probe (labelled {key} videos)")
    train_set = load_annotations(cfg.data.train, root=cfg.data.root, labels=cfg.data.labels)
    val_set = load_annotations(cfg.data.val, root=cfg.data.root, labels=cfg.data.labels)
    labels = [s.label for s in train_set.samples + val_set.samples]
    if min(labels) < 0:
        raise DataError("the linear probe needs labelled train and val videos; some have no label")
    num_classes = cfg.finetune.num_classes or len(train_set.class_names or []) or max(labels) + 1
    modes = MODES if temporal_test else ("normal",)
    encoder, _ = load_encoder(checkpoint)
    device = pick_device(cfg.run.device)
    encoder.to(device)
    train = view_outputs(encoder, train_set.samples, cfg, seed=cfg.run.seed, device=device)
    val = view_outputs(encoder, val_set.samples, cfg, modes, seed=cfg.run.seed, device=device)
    out = probe_features(train, val, num_classes, l2)
    for result in out["results"].values():
        del result["correct"]
    return {"checkpoint": str(resolve_checkpoint(checkpoint)), "train": cfg.data.train, "annotations": cfg.data.val,
            "views": views_of(cfg), "l2": l2, "unreadable": len(train["unreadable"]) + len(val["unreadable"]), **out}


def results_table(out: dict) -> str:
    lines = [f"Linear probe on the frozen encoder of `{out['checkpoint']}`: fitted on {out['train_videos']} videos "
             f"of `{out['train']}` (train top-1 {out['train_top1']:.1f}), scored on {out['videos']} videos of "
             f"`{out['annotations']}`, {out['views']}.", "", "| test | top-1 | top-5 |", "|---|---:|---:|"]
    names = {"normal": "Normal", "single_frame": "Single-frame", "shuffled": "Random-shuffling"}
    lines += [f"| {names[mode]} | {r['top1']:.1f} | {r['top5']:.1f} |" for mode, r in out["results"].items()]
    return "\n".join(lines) + "\n"


def run_linear_probe(args) -> int:
    """CLI: `bevt evaluate --linear-probe --config CFG --checkpoint RUN [--temporal-test] [--out DIR]`."""
    cfg = load_config(args.config, args.overrides)
    out = linear_probe(cfg, args.checkpoint, temporal_test=args.temporal_test, l2=args.probe_l2)
    out_dir = Path(args.out) if args.out else resolve_checkpoint(args.checkpoint) / "linear_probe"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    (out_dir / "results.md").write_text(results_table(out))
    print(results_table(out), end="")
    print(f"written to {out_dir}/results.json and results.md")
    return 0
