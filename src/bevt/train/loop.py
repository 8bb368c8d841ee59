"""The one training loop of bevt: stage 1, stage 2, BEVT-V and finetuning all run through it.

A task object says which batches to draw and how to turn one into a loss dict (tasks.py); the
loop owns everything else: precision, gradient accumulation, clipping, the optimizer step, the
lr schedule, EMA, logging and checkpoints. `train_step` is the only place that calls backward().
"""

from __future__ import annotations

import time

import torch
from torch import nn

from bevt.config import Config
from bevt.errors import TrainingDiverged
from bevt.distributed import DistEnv, autocast, gradient_sync, mean_over_ranks, sum_over_ranks, unwrap
from bevt.host_memory import back_heap_with_huge_pages
from bevt.train.logging import RunLogger, StepTimer
from bevt.train.optim import Schedule, clip_gradients, set_lr

# Runs with at least this many steps left after their first one back the CPU heap with huge
# pages (bevt/host_memory.py). Collapsing the heap into them costs up to about 2.5 ms per MiB,
# once (0.1-0.75 s for the demo-size joint model's 300 MiB, up to a dozen of its steps), and
# makes each later step about 2% faster: it pays back after a few hundred steps, so shorter runs
# skip it.
HUGE_PAGES_MIN_STEPS = 500


def train_step(model: nn.Module, task, optimizer, scaler, precision: str, device: torch.device,
               accum_steps: int, clip_grad: float | None, timer: StepTimer) -> dict[str, torch.Tensor]:
    """One optimizer step over `accum_steps` micro-batches -> metrics: losses and accuracies
    averaged over the micro-batches, clip / image counts summed. Gradients are synchronised
    across ranks on the last micro-batch only."""
    metrics: dict[str, torch.Tensor] = {}
    for micro in range(accum_steps):
        with timer.phase("data"):
            batch = task.next_batch()
        with timer.phase("tokenizer"):
            batch = task.add_targets(model, batch)
        with gradient_sync(model, enabled=micro == accum_steps - 1), timer.phase("forward_backward"):
            with autocast(precision, device):
                out = task.forward(model, batch)
            scaler.scale(out["loss"] / accum_steps).backward()
        for name, value in out.items():
            metrics[name] = metrics.get(name, 0) + value.detach().float() / accum_steps
        for name, count in task.count(batch).items():
            metrics[name] = metrics.get(name, 0) + count
    with timer.phase("optimizer"):
        if clip_grad is not None:
            scaler.unscale_(optimizer)
            metrics["grad_norm"] = clip_gradients(optimizer, clip_grad).detach().float()
        scaler.step(optimizer)
        scaler.update()
        optimizer.__dict__.pop("grad_scale", None)  # clip_gradients' scale, used once
        optimizer.zero_grad(set_to_none=True)
    if timer.active:
        timer.steps += 1
    return metrics


def train(cfg: Config, task, model: nn.Module, optimizer, scaler, ema, schedule: Schedule, state: dict,
          env: DistEnv, logger: RunLogger, save_checkpoint, stop_requested=lambda: False) -> bool:
    """Run optimizer steps from `state["step"]` to `schedule.total_steps`; False when stopped early.

    `save_checkpoint()` is called every `run.checkpoint_every` steps and after the last one;
    metrics are averaged over ranks and logged every `run.log_every` steps. `stop_requested()` is
    asked after every step and answers the same on every rank (preemption): then the step's
    metrics are logged, a checkpoint is written and the loop returns (True if that was the last step).
    """
    model.train()
    timer = StepTimer(env.device)
    window: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    # Counted on the device and read only when logging or saving, so no step waits on a sync.
    nonfinite_steps = torch.zeros((), device=env.device)
    last_checked = first_step = state["step"]
    while state["step"] < schedule.total_steps:
        lr = set_lr(optimizer, state["step"], cfg.optim, schedule)
        timer.active = _is_logging_step(state["step"] + 1, cfg.run.log_every, schedule.total_steps)
        metrics = train_step(model, task, optimizer, scaler, cfg.run.precision, env.device,
                             cfg.optim.accum_steps, cfg.optim.clip_grad, timer)
        nonfinite_steps += (~torch.isfinite(metrics["loss"])).float()
        if ema is not None:
            ema.update(unwrap(model), step=state["step"])
        state["step"] += 1
        if (state["step"] == first_step + 1 and env.device.type == "cpu"
                and schedule.total_steps - state["step"] >= HUGE_PAGES_MIN_STEPS):
            back_heap_with_huge_pages()  # the heap now holds a step's buffers
        logger.advance()
        for name, value in metrics.items():
            window[name] = window.get(name, 0) + value
        window_steps += 1

        step = state["step"]
        stopping = stop_requested()
        logged = stopping or _is_logging_step(step, cfg.run.log_every, schedule.total_steps)
        saving = stopping or step % cfg.run.checkpoint_every == 0 or step == schedule.total_steps
        if logged or saving:
            diverged = int(sum_over_ranks(nonfinite_steps.clone()))
            if diverged:
                raise TrainingDiverged(
                    f"the loss is NaN or infinite in {diverged} of steps "
                    f"{last_checked + 1}-{step}; no checkpoint was written for them. Resume from the last "
                    "checkpoint with a lower optim.lr, a tighter optim.clip_grad or run.precision=fp32"
                )
            last_checked = step
        if logged:
            seconds = time.perf_counter() - window_start
            values = {name: float(total) / window_steps for name, total in window.items()}
            values.update(timer.pop())
            values = mean_over_ranks(values, env.device)
            for unit in ("clips", "images"):
                if unit in values:  # per-rank items per step -> global items per second
                    values[f"{unit}_per_s"] = values.pop(unit) * env.world_size * window_steps / seconds
            logger.log(step, {**values, "lr": lr, "epoch": step / schedule.steps_per_epoch})
        if saving:
            save_checkpoint()
        if stopping and step < schedule.total_steps:
            return False
        if logged:  # the next window starts after the checkpoint, which is no training time
            window, window_steps, window_start = {}, 0, time.perf_counter()
    return True


def _is_logging_step(step: int, log_every: int, total_steps: int) -> bool:
    return step % log_every == 0 or step == total_steps
