"""Processes under torchrun: set-up, per-rank seeding, DDP / FSDP wrapping, metric reductions, precision.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything degrades to a single
process and every helper is a no-op. NCCL on GPUs, gloo on CPU. Multi-node is torchrun's
rendezvous (see scripts/slurm_pretrain.sh); nothing here depends on the node count.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch import nn

from bevt.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """Mixed precision context (bf16 on CPU or GPU, fp16 on GPU); fp32 runs without one."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device='cuda': no CUDA device is visible; use run.device=cpu or auto")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)


def init_distributed(device_preference: str) -> DistEnv:
    """Join the torchrun process group when launched by torchrun; silence logging on ranks > 0."""
    device = pick_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)
    return DistEnv(rank, world_size, local_rank, device)


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes: (0, 1) outside a process group."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown() -> None:
    global _HOST_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None


_HOST_GROUP = None  # a gloo group beside NCCL for small host-side agreements, made on first use


def max_over_ranks_on_host(value: int) -> int:
    """The largest of every rank's `value` (a plain int). Under NCCL it goes through a gloo group,
    so asking every step costs a CPU round trip and never waits for the GPU. Collective: every
    rank calls it at the same point."""
    global _HOST_GROUP
    if not dist.is_initialized():
        return value
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return int(tensor)


def seed_everything(seed: int, rank: int) -> None:
    """Python, NumPy and torch RNGs of this rank: seed + rank, so ranks draw different noise."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def wrap_model(model: nn.Module, env: DistEnv, parallel: str) -> nn.Module:
    """DDP (replicated weights) or FSDP2 (`fully_shard` per Swin block, then the root)."""
    if env.world_size == 1:
        return model
    if parallel == "fsdp":
        for module in model.modules():
            if type(module).__name__ == "SwinBlock":
                fully_shard(module)
        return fully_shard(model)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def gradient_sync(model: nn.Module, enabled: bool):
    """Context for one micro-batch: skip the gradient all-reduce unless `enabled` (accumulation)."""
    if enabled:
        return nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if _is_fsdp(model):
        return _fsdp_no_sync(model)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _is_fsdp(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def _full_options():
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights (under FSDP a collective: every rank must call it)."""
    if _is_fsdp(model):
        return get_model_state_dict(model, options=_full_options())
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state (under FSDP a collective, keyed by parameter name)."""
    if _is_fsdp(model):
        return get_optimizer_state_dict(model, optimizer, options=_full_options())
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if _is_fsdp(model):
        set_optimizer_state_dict(model, optimizer, state, options=_full_options())
    else:
        optimizer.load_state_dict(state)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one all-reduce)."""
    if not dist.is_initialized() or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (for per-rank RNG and loader state in checkpoints)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
