"""Diagnostics of a finished `bevt demo` run: what the video targets carry, and the tubelet symmetry.

Prints numbers, draws no conclusions. For one seed of the demo in DIR:

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

    python benchmarks/demo_diagnostics.py demo_out --seed 0 --clips 48
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bevt.checkpoint import complete_checkpoints, read_weights
from bevt.config import config_from_dict
from bevt.data.datasets import load_annotations
from bevt.data.decode import read_clip
from bevt.data.transforms import to_video, tokenizer_view
from bevt.masking import build_mask_generator, mask_to_token_grid
from bevt.models import create_model
from bevt.models.convert import inflate_patch_embed
from bevt.tokenizers import load_tokenizer

MOVING_PIXEL_THRESHOLD = 0.1  # a pixel this far from its clip's median (any channel, [0, 1]) shows the object


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", help="the demo's output directory (holds results.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=48, help="temporal validation clips to tokenize")
    args = parser.parse_args()
    outputs = json.loads((Path(args.demo) / "results.json").read_text())["outputs"]
    bench, tokenizer = outputs["benchmark"], outputs["tokenizer"]
    runs = {name.split("pretrain ")[1].split(" ")[0]: output for name, output in outputs.items()
            if name.startswith(f"seed {args.seed}: pretrain ")}
    if not runs:
        raise SystemExit(f"{args.demo}: no pretraining of seed {args.seed}")
    clips = [s.path for s in load_annotations(bench["paths"]["temporal_val"]).samples[: args.clips]]
    targets = measure_targets(clips, tokenizer["path"], runs["BEVT"]["config"], args.seed)
    print(f"video targets on {targets['clips']} temporal validation clips (seed {args.seed}'s masks):")
    for key, value in targets.items():
        print(f"  {key:26s} {value:.4g}" if isinstance(value, float) else f"  {key:26s} {value}")
    print("tubelet asymmetry |W0 - W1| / |W0 + W1| of the video patch embedding (start -> end of temporal finetuning):")
    model_name = runs["BEVT"]["config"]["model"]["name"]
    for method, init in (("No pretraining", None), ("BEVT-I", "BEVT-I"), ("BEVT-V", "BEVT-V"), ("BEVT", "BEVT")):
        start = tubelet_asymmetry(starting_embedding(runs.get(init), model_name, args.seed))
        finetuned = Path(args.demo) / f"seed{args.seed}" / "finetune" / method / "temporal"
        checkpoints = complete_checkpoints(finetuned) if finetuned.is_dir() else []
        end = (f"{tubelet_asymmetry(read_weights(checkpoints[-1])['encoder.patch_embed.proj.weight']):.3f}"
               if checkpoints else "not finetuned")
        print(f"  {method:15s} {start:.3f} -> {end}")


if __name__ == "__main__":
    main()
