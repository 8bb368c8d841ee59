"""Atomic checkpoints and resume.

Layout: RUN/checkpoints/step_0001000/ holding model.safetensors, ema.safetensors (with EMA),
train_state.pt (step, optimizer, grad scaler, every RNG state, loader positions), config.yaml and,
for finetuning, classes.json. A checkpoint is written into step_XXXXXXX.tmp/, every file is
fsynced, and the directory is renamed into place: a directory without the .tmp suffix is complete,
so a run killed mid-write leaves only a .tmp that is ignored and overwritten. train_state.pt holds
plain tensors, numbers, lists and dicts only, and is read back with `weights_only=True`.

A live run owns its directory through RUN/run.lock (`RunLock`); `--resume auto` takes the newest
complete checkpoint whose files are readable, skipping (and naming) a corrupt newer one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bevt.config import Config, config_from_dict, save_config
from bevt.errors import CheckpointError, ConfigError, UsageError, check_writable

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{7})$")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"
LOCK_FILE = "run.lock"


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
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / MODEL_FILE).is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: neither a checkpoint directory (no {MODEL_FILE}) nor a run with checkpoints")
    return found[-1]


def resume_checkpoint(resume: str | None, run_dir: str | Path) -> Path | None:
    """`--resume auto` -> the newest complete and readable checkpoint of run_dir (None on a fresh
    run; a corrupt newer one is skipped with a warning naming it); a path -> that checkpoint."""
    if resume is None:
        return None
    if resume != "auto":
        return resolve_checkpoint(resume)
    found = complete_checkpoints(run_dir)
    skipped = []
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("--resume auto: skipping %s, it cannot be read (%s)", path, problem)
        skipped.append(f"{path.name} ({problem})")
    if skipped:
        raise CheckpointError(f"--resume auto: no readable checkpoint in {run_dir}: {'; '.join(skipped)}")
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (a truncated or garbage file), or None.

    Cheap: safetensors headers (which fail on a truncated file) and the train_state archive
    mapped, not read; a full read happens on resume."""
    for name in (MODEL_FILE, EMA_FILE):
        if name == MODEL_FILE or (path / name).is_file():
            try:
                with safe_open(path / name, framework="pt"):
                    pass
            except (OSError, SafetensorError) as err:
                return f"{name}: {_first_line(err)}"
    try:
        read_config(path)
    except CheckpointError as err:
        return str(err)
    try:
        torch.load(path / TRAIN_STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling garbage raises anything from EOFError to UnpicklingError
        return f"{TRAIN_STATE_FILE}: {explain_load_error(err)}"
    return None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def explain_load_error(err: Exception) -> str:
    """A one-line reason for a failed `torch.load(weights_only=True)` (torch's own message is
    a page long and suggests unpickling untrusted code)."""
    text = str(err)
    if match := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (f"it pickles Python objects ({match[1]}), not only tensors, and bevt never unpickles code; "
                "save a state_dict (torch.save(model.state_dict(), ...)) or safetensors instead")
    if match := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return f"not a PyTorch checkpoint ({match[1].strip()})"
    if "central directory" in text or "mmap can only be used" in text or isinstance(err, EOFError):
        return "truncated or not a PyTorch checkpoint (no complete zip archive)"
    return f"{type(err).__name__}: {_first_line(err)}"


def read_weights(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model (or EMA) weights of a checkpoint directory."""
    return load_weights_file(Path(path) / (EMA_FILE if ema else MODEL_FILE))


def load_weights_file(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a missing, truncated or foreign file -> `CheckpointError`."""
    try:
        return load_file(file)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file}: cannot read weights: {err}") from None


def read_train_state(path: str | Path) -> dict:
    file = Path(path) / TRAIN_STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling garbage raises anything from EOFError to UnpicklingError
        raise CheckpointError(f"{file}: cannot read the training state: {explain_load_error(err)}") from None


def read_config(path: str | Path) -> Config:
    file = Path(path) / CONFIG_FILE
    try:
        return config_from_dict(yaml.safe_load(file.read_text()))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, UsageError) as err:
        raise CheckpointError(f"{file}: cannot read the checkpoint's config: {_first_line(err)}") from None


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
# Ownership of a run directory by one live run.
# ----------------------------------------------------------------------------------------------


class RunLock:
    """A live run's claim on its run directory: RUN/run.lock names its pid, host and scheduler job.

    `with RunLock(run_dir):` refuses (one `ConfigError`) while another live run holds the lock. The
    lock is a hard link to a fully written file (atomic, on NFS too), so it is absent or complete.
    A lock is stale, and taken over with a warning, when its run is gone: the same host and a pid
    that is not running, or the same scheduler job (SLURM_JOB_ID / TORCHELASTIC_RUN_ID: a
    requeued job or a restarted torchrun, whose earlier attempt the scheduler stopped). Another
    host's lock cannot be checked from here; the message says which file to delete if that run
    is gone.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID"),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def __enter__(self) -> "RunLock":
        check_writable(self.run_dir, "run.out", folder=True)
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{LOCK_FILE}.{self.owner['host']}.{self.owner['pid']}")
        mine.write_text(json.dumps(self.owner))
        try:
            for _ in range(3):  # a stale lock is removed and the link tried again
                try:
                    os.link(mine, self.path)
                    return self
                except FileExistsError:
                    pass
                holder = _read_lock(self.path)
                if not holder and not self.path.exists():
                    continue  # the other run ended in between
                reason = self._why_stale(holder)
                if reason is None:
                    who = (f"pid {holder['pid']} on {holder['host']} since {holder.get('started')}"
                           if holder.keys() >= {"pid", "host"} else f"an unreadable lock, {self.path}")
                    raise ConfigError(f"run.out={self.run_dir} is in use by another run ({who}): wait for it to "
                                      f"end or choose another run.out; if that run is gone, delete {self.path}")
                log.warning("run.out=%s: taking over the lock of an earlier run that is gone (%s)", self.run_dir, reason)
                self.path.unlink(missing_ok=True)
            raise ConfigError(f"run.out={self.run_dir}: could not take {self.path}: other runs keep taking it")
        finally:
            mine.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        if _read_lock(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        if self.created and not any(self.run_dir.iterdir()):  # a run that stopped before writing leaves no trace
            self.run_dir.rmdir()

    def _why_stale(self, holder: dict) -> str | None:
        if holder.get("job") and holder.get("job") == self.owner["job"]:
            return f"an earlier attempt of job {holder['job']}"
        if holder.get("host") == self.owner["host"]:
            pid = holder.get("pid")
            if not isinstance(pid, int) or pid == os.getpid() or not _pid_running(pid):
                return f"pid {pid} is not running on {holder['host']}"
        return None


def _read_lock(path: Path) -> dict:
    """The lock's owner ({} once the lock is gone or if it was damaged by hand)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
