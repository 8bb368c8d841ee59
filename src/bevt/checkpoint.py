"""Atomic checkpoints and resume.

Layout: RUN/checkpoints/step_0001000/ holding model.safetensors, ema.safetensors (with EMA),
train_state.pt (step, optimizer, grad scaler, every RNG state, loader positions), config.yaml and,
for finetuning, classes.json. A checkpoint is written into step_XXXXXXX.tmp/, every file is
fsynced, and the directory is renamed into place: a directory without the .tmp suffix is complete,
so a run killed mid-write leaves only a .tmp that is ignored and overwritten. train_state.pt holds
plain tensors, numbers, lists and dicts only, and is read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bevt.config import Config, config_from_dict, save_config
from bevt.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{7})$")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    config: Config,
    model_state: dict[str, torch.Tensor],
    train_state: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
    class_names: list[str] | None = None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of `step` atomically, then delete all but the newest `keep`."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model_state.items()}, tmp / MODEL_FILE)
    if ema_state is not None:
        save_file({k: v.contiguous() for k, v in ema_state.items()}, tmp / EMA_FILE)
    torch.save(train_state, tmp / TRAIN_STATE_FILE)
    save_config(config, tmp / CONFIG_FILE)
    if class_names is not None:
        (tmp / CLASSES_FILE).write_text(json.dumps(class_names))
    for path in [*tmp.iterdir(), tmp]:
        _fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync(final.parent)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / TRAIN_STATE_FILE).is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its newest complete checkpoint)."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: neither a checkpoint directory (no {MODEL_FILE}) nor a run with checkpoints")
    return found[-1]


def resume_checkpoint(resume: str | None, run_dir: str | Path) -> Path | None:
    """`--resume auto` -> newest complete checkpoint of run_dir (None on a fresh run); a path -> it."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    return resolve_checkpoint(resume)


def read_weights(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model (or EMA) weights of a checkpoint directory."""
    file = Path(path) / (EMA_FILE if ema else MODEL_FILE)
    try:
        return load_file(file)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file}: cannot read weights: {err}") from None


def read_train_state(path: str | Path) -> dict:
    file = Path(path) / TRAIN_STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{file}: cannot read training state: {err}") from None


def read_config(path: str | Path) -> Config:
    return config_from_dict(yaml.safe_load((Path(path) / CONFIG_FILE).read_text()))


def read_class_names(path: str | Path) -> list[str] | None:
    file = Path(path) / CLASSES_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                allow_missing: tuple[str, ...] = ()) -> list[str]:
    """`module.load_state_dict(state)` that raises one `CheckpointError` naming the missing,
    unexpected and mis-shaped keys of `source`. Missing keys that start with a prefix in
    `allow_missing` keep their current values; returns the missing keys."""
    check_keys(module.state_dict(), state, source, allow_missing)
    missing, _ = module.load_state_dict(state, strict=False)
    return missing


def check_keys(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
               allow_missing: tuple[str, ...] = ()) -> None:
    """Raise `CheckpointError` unless `state` has exactly the keys and shapes of `expected`
    (missing keys under an `allow_missing` prefix are fine)."""
    missing = sorted(k for k in expected.keys() - state.keys() if not (allow_missing and k.startswith(allow_missing)))
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(expected.keys() & state.keys()) if expected[k].shape != state[k].shape]
    parts = [f"{name}: {preview_keys(keys)}" for name, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if parts:
        raise CheckpointError(f"{source} does not match the model; " + "; ".join(parts))


def preview_keys(keys: list[str]) -> str:
    """The first 8 keys and how many there are in all, for error messages."""
    return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")


# ----------------------------------------------------------------------------------------------
# RNG state as plain values (weights_only=True loads only tensors, numbers, lists, dicts).
# ----------------------------------------------------------------------------------------------


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
