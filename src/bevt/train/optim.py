"""AdamW parameter groups (weight decay, layer-wise lr decay) and the warm-up + cosine schedule.

Each group carries an `lr_scale`; `set_lr` multiplies it with the scheduled lr every optimizer
step, so layer decay and the backbone multiplier survive warm-up and cosine. The schedule is a
pure function of the step, so a checkpoint's step is all the scheduler state there is.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from bevt.config import OptimConfig

# Parameters that are not weights of a linear map: decaying them towards zero only hurts.
NO_DECAY_NAMES = ("relative_position_bias_table", "mask_token", "pos_embed")
# Devices whose parameters the trainer updates with the fused AdamW kernel.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE = re.compile(r"(?:^|\.)layers\.(\d+)\.downsample\.")


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Weight matrices and conv kernels decay; norms, biases, bias tables and tokens do not."""
    return param.ndim > 1 and not any(key in name for key in NO_DECAY_NAMES)


def swin_layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 = patch embedding, 1..N = blocks, N+1 = rest.

    A merging layer belongs with the last block of the stage it follows (as in BEiT / Swin
    finetuning code); the final norm, the head and anything unmatched are the top layer.
    """
    if "patch_embed" in name or "mask_token" in name:
        return 0
    if match := _BLOCK.search(name):
        stage, block = int(match[1]), int(match[2])
        return sum(depths[:stage]) + block + 1
    if match := _DOWNSAMPLE.search(name):
        return sum(depths[: int(match[1]) + 1])
    return sum(depths) + 1


def param_groups(model: nn.Module, cfg: OptimConfig, depths: tuple[int, ...]) -> list[dict]:
    """AdamW groups keyed by (weight decay on/off, lr scale); frozen parameters are left out.

    lr scale = layer_decay ** (N + 1 - layer id), times `backbone_lr_scale` for the encoder.
    """
    top = sum(depths) + 1
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = uses_weight_decay(name, param)
        scale = cfg.layer_decay ** (top - swin_layer_id(name, depths))
        if name.startswith("encoder."):
            scale *= cfg.backbone_lr_scale
        group = groups.setdefault(
            (decay, scale), {"params": [], "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
        )
        group["params"].append(param)
    return list(groups.values())


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr multiplier at optimizer step `step`: linear 0 -> 1 over warm-up, cosine 1 -> min_ratio after."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig, depths: tuple[int, ...], fused: bool = False):
    """AdamW over `param_groups`; `fused` runs PyTorch's one-kernel-per-parameter update (devices
    in FUSED_ADAMW_DEVICES), which on CPU also replaces ~6 small ops per parameter."""
    return torch.optim.AdamW(param_groups(model, cfg, depths), lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, warmup_steps: int, total_steps: int) -> float:
    """Set every group's lr for `step`; returns the unscaled lr (what the progress bar shows)."""
    lr = cfg.lr * warmup_cosine(step, warmup_steps, total_steps, cfg.min_lr / cfg.lr)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr
