"""Diagnostics of `bevt demo`: what the video targets carry, the tubelet symmetry, interval coverage.

Prints numbers, draws no conclusions. `run DIR --seed S`, for one seed of the demo in DIR:

- the video targets, on temporal-task validation clips: the tokenizer's reconstruction PSNR on
  the moving object's pixels and on the background (the object is the only thing that moves, so
  its pixels are those that differ from the clip's per-pixel median over time); how often a token
  changes between consecutive frames in cells without the object (noise no model can predict)
  and in cells with it; the share of the most frequent token; and the accuracy of copying each
  masked token from the nearest frame where its cell is visible, with tube masks drawn as in
  pretraining (a shortcut that needs no motion);
- the asymmetry |W0 - W1| / |W0 + W1| of each encoder's video patch embedding over the two
  frames of a tubelet (0: both frames weighted alike, as inflating a 2D embedding makes them, so
  a tubelet cannot tell forward from backward; about 1 for independent random weights), where
  temporal finetuning started and, when that seed was finetuned, where it ended.

`coverage`: the share of simulated comparisons whose 95% interval (bevt/demo/stats.py) holds the
true difference, per scenario (seeds, seed noise, clip noise; see `interval_coverage`).

    python benchmarks/demo_diagnostics.py run demo_out --seed 0 --clips 48
    python benchmarks/demo_diagnostics.py coverage --replicates 2000
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bevt.checkpoint import complete_checkpoints, read_weights
from bevt.config import config_from_dict
from bevt.data.datasets import load_annotations
from bevt.data.decode import read_clip
from bevt.data.transforms import to_video, tokenizer_view
from bevt.demo.stats import paired_difference
from bevt.masking import build_mask_generator, mask_to_token_grid
from bevt.models import create_model
from bevt.models.convert import inflate_patch_embed
from bevt.tokenizers import load_tokenizer

MOVING_PIXEL_THRESHOLD = 0.1  # a pixel this far from its clip's median (any channel, [0, 1]) shows the object
# (seeds, seed effect sd, own clip effect) of the coverage scenarios
COVERAGE_SCENARIOS = ((3, 0.08, 0.0), (3, 0.3, 0.0), (3, 0.0, 0.0), (1, 0.0, 0.0), (5, 0.05, 0.0), (3, 0.0, 1.0),
                      (3, 0.03, 1.0))


def interval_coverage(rng: np.random.Generator, seeds: int, seed_sd: float, own_clip_effect: float,
                      replicates: int, clips: int = 150) -> float:
    """Share of simulated comparisons whose interval holds the true expected difference.

    Per clip i and seed s the probability that A (B) is right is 0.65 (0.55) + a seed effect (sd
    `seed_sd`, drawn per method) + the clip's difficulty (uniform +-0.3, shared by A and B) +
    `own_clip_effect` x a difficulty of the clip for that method alone, clipped to [0.01, 0.99];
    correctness is drawn from it. The truth is the expectation over seeds and clips (Monte Carlo).
    """
    def chance(base, seed_effect, shared, own):
        return np.clip(base + seed_effect + shared + own_clip_effect * own, 0.01, 0.99)

    u = rng.normal(0, seed_sd, (2, 1_000_000))
    w = rng.uniform(-0.3, 0.3, (3, 1_000_000))
    truth = 100 * (chance(0.65, u[0], w[0], w[1]) - chance(0.55, u[1], w[0], w[2])).mean()
    hits = 0
    for _ in range(replicates):
        w = rng.uniform(-0.3, 0.3, (3, clips))
        u_a, u_b = rng.normal(0, seed_sd, (2, seeds, 1))
        a = rng.random((seeds, clips)) < chance(0.65, u_a, w[0], w[1])
        b = rng.random((seeds, clips)) < chance(0.55, u_b, w[0], w[2])
        interval = paired_difference(a, b)
        hits += interval["low"] <= truth <= interval["high"]
    return hits / replicates


def copy_from_nearest_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(T,h,w) tokens and mask -> each cell's token in the nearest frame where that cell is
    unmasked (-1 where it is masked in every frame): the guess of a model that copies, not one
    that understands motion."""
    frames = tokens.shape[0]
    guess = torch.full_like(tokens, -1)
    for t in range(frames):
        for s in sorted(range(frames), key=lambda s: abs(s - t), reverse=True):  # nearest written last
            guess[t] = torch.where(mask[s], guess[t], tokens[s])
    return guess


def tubelet_asymmetry(weight: torch.Tensor) -> float:
    """|W0 - W1| / |W0 + W1| of a (C,3,2,4,4) video patch embedding over its two frames."""
    first, second = weight[:, :, 0].float(), weight[:, :, 1].float()
    return ((first - second).norm() / (first + second).norm().clamp_min(1e-12)).item()


def psnr(mean_squared_error: float) -> float:
    return -10 * math.log10(max(mean_squared_error, 1e-10))


@torch.no_grad()
def measure_targets(clips: list[str], tokenizer_dir: str, joint_config: dict, seed: int) -> dict:
    """The video-target measurements described in the module docstring, over `clips`."""
    cfg = config_from_dict(joint_config)
    tokenizer = load_tokenizer(tokenizer_dir)
    frames, size = cfg.data.frames, cfg.data.size
    grid = (frames // 2, size // 16, size // 16)
    masks = build_mask_generator(cfg.masking.video, grid, ratio=cfg.masking.ratio, min_cells=cfg.masking.min_cells,
                                 tube_length=cfg.masking.tube_length, wrap=cfg.masking.wrap)
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(tokenizer.vocab_size)
    totals = dict.fromkeys(("object_sq_err", "object_px", "background_sq_err", "background_px", "static_flips",
                            "static_pairs", "object_flips", "object_pairs", "copied", "masked"), 0.0)
    for path in clips:
        decoded, _ = read_clip(path, lambda n: range(min(n, frames)))
        pixels = tokenizer_view(to_video(decoded), size // 2).transpose(0, 1)  # (T,3,h,w)
        tokens = tokenizer.encode(pixels)  # (T,h/8,w/8)
        counts += torch.bincount(tokens.flatten(), minlength=tokenizer.vocab_size)
        sq_err = (tokenizer.decode(tokens) - pixels).pow(2).mean(1)  # (T,h,w)
        moving = (pixels - pixels.median(0).values).abs().amax(1) > MOVING_PIXEL_THRESHOLD  # (T,h,w)
        totals["object_sq_err"] += sq_err[moving].sum().item()
        totals["object_px"] += moving.sum().item()
        totals["background_sq_err"] += sq_err[~moving].sum().item()
        totals["background_px"] += (~moving).sum().item()
        cell_moving = F.max_pool2d(moving[:, None].float(), tokenizer.downsample)[:, 0].bool()  # (T,h/8,w/8)
        pair_moving = cell_moving[1:] | cell_moving[:-1]
        flips = tokens[1:] != tokens[:-1]
        totals["static_flips"] += flips[~pair_moving].sum().item()
        totals["static_pairs"] += (~pair_moving).sum().item()
        totals["object_flips"] += flips[pair_moving].sum().item()
        totals["object_pairs"] += pair_moving.sum().item()
        mask = mask_to_token_grid(masks(generator))  # (T,h/8,w/8)
        guess = copy_from_nearest_visible(tokens, mask)
        totals["copied"] += (guess[mask] == tokens[mask]).sum().item()
        totals["masked"] += mask.sum().item()
    return {
        "clips": len(clips),
        "codes_used": int((counts > 0).sum()),
        "codebook_size": tokenizer.vocab_size,
        "top_token_share": (counts.max() / counts.sum()).item(),
        "object_pixel_share": totals["object_px"] / (totals["object_px"] + totals["background_px"]),
        "object_psnr_db": psnr(totals["object_sq_err"] / max(totals["object_px"], 1)),
        "background_psnr_db": psnr(totals["background_sq_err"] / max(totals["background_px"], 1)),
        "static_cell_change_rate": totals["static_flips"] / max(totals["static_pairs"], 1),
        "object_cell_change_rate": totals["object_flips"] / max(totals["object_pairs"], 1),
        "copy_accuracy": totals["copied"] / max(totals["masked"], 1),
    }


def starting_embedding(run: dict | None, model_name: str, seed: int) -> torch.Tensor:
    """The video patch embedding temporal finetuning starts from (an image-stream run's inflated)."""
    if run is None:
        torch.manual_seed(seed)
        return create_model(model_name).patch_embed.proj.weight.detach()
    state = read_weights(run["checkpoint"])
    if run["streams"] == "image":
        return inflate_patch_embed(state["encoder.patch_embed_2d.proj.weight"])
    return state["encoder.patch_embed.proj.weight"]


def run_diagnostics(demo: str, seed: int, clip_count: int) -> None:
    outputs = json.loads((Path(demo) / "results.json").read_text())["outputs"]
    bench, tokenizer = outputs["benchmark"], outputs["tokenizer"]
    runs = {name.split("pretrain ")[1].split(" ")[0]: output for name, output in outputs.items()
            if name.startswith(f"seed {seed}: pretrain ")}
    if not runs:
        raise SystemExit(f"{demo}: no pretraining of seed {seed}")
    clips = [s.path for s in load_annotations(bench["paths"]["temporal_val"]).samples[:clip_count]]
    targets = measure_targets(clips, tokenizer["path"], runs["BEVT"]["config"], seed)
    print(f"video targets on {targets['clips']} temporal validation clips (seed {seed}'s masks):")
    for key, value in targets.items():
        print(f"  {key:26s} {value:.4g}" if isinstance(value, float) else f"  {key:26s} {value}")
    print("tubelet asymmetry |W0 - W1| / |W0 + W1| of the video patch embedding (start -> end of temporal finetuning):")
    model_name = runs["BEVT"]["config"]["model"]["name"]
    for method, init in (("No pretraining", None), ("BEVT-I", "BEVT-I"), ("BEVT-V", "BEVT-V"), ("BEVT", "BEVT")):
        start = tubelet_asymmetry(starting_embedding(runs.get(init), model_name, seed))
        finetuned = Path(demo) / f"seed{seed}" / "finetune" / method / "temporal"
        checkpoints = complete_checkpoints(finetuned) if finetuned.is_dir() else []
        end = (f"{tubelet_asymmetry(read_weights(checkpoints[-1])['encoder.patch_embed.proj.weight']):.3f}"
               if checkpoints else "not finetuned")
        print(f"  {method:15s} {start:.3f} -> {end}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run", help="targets and tubelet symmetry of one seed of a finished demo")
    run.add_argument("demo", help="the demo's output directory (holds results.json)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--clips", type=int, default=48, help="temporal validation clips to tokenize")
    coverage = sub.add_parser("coverage", help="coverage of the paired 95% intervals on simulated accuracies")
    coverage.add_argument("--replicates", type=int, default=2000)
    args = parser.parse_args()
    if args.what == "run":
        run_diagnostics(args.demo, args.seed, args.clips)
        return
    rng = np.random.default_rng(0)
    print("| seeds | seed effect sd | own clip effect | coverage of the 95% interval |")
    print("|---:|---:|---:|---:|")
    for seeds, seed_sd, own in COVERAGE_SCENARIOS:
        print(f"| {seeds} | {seed_sd} | {own} | {interval_coverage(rng, seeds, seed_sd, own, args.replicates):.3f} |")


if __name__ == "__main__":
    main()
