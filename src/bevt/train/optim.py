"""AdamW parameter groups, the warm-up + cosine schedule and the weight EMA.

Two groupings (`optim.param_groups`):
- `clean`: weight decay only on weight matrices and conv kernels, layer-wise lr decay by block
  depth (merging layers with the block before them) and a backbone lr multiplier.
- `official`: the released BEVT configs' rule, mmcv's `paramwise_cfg.custom_keys`. Keys are tried
  longest first (ties in alphabetical order) and the first key that is a substring of the
  parameter's full name in the released model sets its lr and weight-decay multipliers; a
  parameter no key matches keeps both at 1. Because only one key decides, a key can shadow
  another: `relative_position_bias_table` (28 characters) is longer than every block key of the
  K400 layer decay, so bias tables train at lr x1.0, and a block key is longer than `norm`, so
  norms inside blocks get weight decay.

Each group carries an `lr_scale`; `set_lr` multiplies it with the scheduled lr every optimizer
step, so layer decay and the backbone multiplier survive warm-up and cosine. The schedule is a
pure function of the step, so a checkpoint's step is all the scheduler state there is.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3
from torch import nn

from bevt.config import OptimConfig
from bevt.models.convert import released_name

log = logging.getLogger(__name__)

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


def official_multipliers(name: str, cfg: OptimConfig) -> tuple[float, float]:
    """(lr multiplier, weight-decay multiplier) of parameter `name` under `cfg.custom_keys`."""
    full_name = released_name(name)
    for key in sorted(sorted(cfg.custom_keys), key=len, reverse=True):
        if key in full_name:
            return cfg.custom_keys[key].lr_mult, cfg.custom_keys[key].decay_mult
    return 1.0, 1.0


def param_groups(model: nn.Module, cfg: OptimConfig, depths: tuple[int, ...]) -> list[dict]:
    """AdamW groups keyed by (weight decay, lr scale); frozen parameters are left out.

    clean: lr scale = layer_decay ** (N + 1 - layer id), times `backbone_lr_scale` for the encoder.
    official: lr scale and weight decay from the custom key that decides each parameter.
    """
    top = sum(depths) + 1
    groups: dict[tuple[float, float], dict] = {}
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    for name, param in trainable:
        if cfg.param_groups == "official":
            scale, decay_mult = official_multipliers(name, cfg)
            weight_decay = cfg.weight_decay * decay_mult
        else:
            weight_decay = cfg.weight_decay if uses_weight_decay(name, param) else 0.0
            scale = cfg.layer_decay ** (top - swin_layer_id(name, depths))
            if name.startswith("encoder."):
                scale *= cfg.backbone_lr_scale
        group = groups.setdefault((weight_decay, scale), {"params": [], "weight_decay": weight_decay, "lr_scale": scale})
        group["params"].append(param)
    if cfg.param_groups == "official":
        names = [released_name(name) for name, _ in trainable]
        unused = [key for key in cfg.custom_keys if not any(key in name for name in names)]
        if unused:  # e.g. the Swin-B layer-decay keys on a Swin-T: its levels would be wrong
            log.warning("optim.custom_keys match no trainable parameter of this model: %s", ", ".join(unused))
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig, depths: tuple[int, ...], fused: bool = False):
    """AdamW over `param_groups`; `fused` runs PyTorch's one-kernel-per-parameter update (devices
    in FUSED_ADAMW_DEVICES), which on CPU also replaces ~6 small ops per parameter."""
    return torch.optim.AdamW(param_groups(model, cfg, depths), lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale the gradients of the optimizer's parameters (every trainable one) to a global norm
    of at most `max_norm`, as clip_grad_norm_ does -> the norm before clipping.

    A fused AdamW divides every gradient by its `grad_scale` attribute inside its one update
    pass (the hook GradScaler uses), so there the scaling is handed to it instead of making a
    pass of its own over all gradients; `scaler.step` removes the attribute, `train_step` too.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if optimizer.defaults.get("fused") and type(total) is torch.Tensor:  # not under FSDP's DTensors
        optimizer.grad_scale = torch.clamp((total + 1e-6) / max_norm, min=1.0)
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


@dataclass
class Schedule:
    """Optimizer steps of the run, derived from epochs of the task's main stream."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def from_epochs(cls, batches_per_epoch: int, accum_steps: int, epochs: float, warmup_epochs: float) -> "Schedule":
        steps_per_epoch = max(1, batches_per_epoch // accum_steps)
        return cls(steps_per_epoch, max(1, round(epochs * steps_per_epoch)), round(warmup_epochs * steps_per_epoch))


def lr_factor(step: int, cfg: OptimConfig, schedule: Schedule) -> float:
    """lr / cfg.lr at optimizer step `step`: a cosine from 1 to min_lr / lr, times a linear warm-up.

    The cosine spans the whole run (`cosine_over=whole_run`, as mmcv's CosineAnnealing) or the
    steps after warm-up; with `lr_by_epoch` it reads the first step of the current epoch, so it
    moves once per epoch. During warm-up it is scaled by a factor that rises linearly from
    `warmup_ratio` at step 0 to 1 at the end of warm-up (mmcv's linear warm-up).
    """
    warmup, total = schedule.warmup_steps, schedule.total_steps
    cosine_step = step - step % schedule.steps_per_epoch if cfg.lr_by_epoch else step
    if cfg.cosine_over == "whole_run":
        progress = cosine_step / total
    else:
        progress = max(0, cosine_step - warmup) / max(1, total - warmup)
    min_ratio = cfg.min_lr / cfg.lr
    factor = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if step < warmup:
        factor *= 1 - (1 - cfg.warmup_ratio) * (1 - step / warmup)
    return factor


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, schedule: Schedule) -> float:
    """Set every group's lr for `step`; returns the unscaled lr (what the progress bar shows)."""
    lr = cfg.lr * lr_factor(step, cfg, schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def build_ema(model: nn.Module, cfg: OptimConfig) -> ModelEmaV3 | None:
    """The weight EMA, updated once per optimizer step with retention `cfg.ema_decay` (or None)."""
    return ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
