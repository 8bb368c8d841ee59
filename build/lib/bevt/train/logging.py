"""What a run shows and records: a progress bar, metrics.jsonl, TensorBoard, and step timings.

Only rank 0 creates any of them. On resume, metrics.jsonl and TensorBoard drop what was logged
after the checkpoint's step, so the records read as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BAR_KEYS = ("loss", "acc_image", "acc_video", "acc", "lr", "clips_per_s", "images_per_s")


class StepTimer:
    """Wall time per phase of the steps it is `active` for (data, tokenizer, forward/backward, optimizer).

    On CUDA each timed phase ends with a synchronize, so the split is real rather than launch
    time; that is why the loop activates it on logging steps only and every other step runs
    without a host-device sync.
    """

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.active = True
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0

    @contextmanager
    def phase(self, name: str):
        if not self.active:
            yield
            return
        start = time.perf_counter()
        yield
        if self.sync:
            torch.cuda.synchronize()
        self.totals[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """Seconds per timed step and phase since the last pop, as `time_<phase>` metrics."""
        out = {f"time_{name}": seconds / max(self.steps, 1) for name, seconds in self.totals.items()}
        self.totals.clear()
        self.steps = 0
        return out


def _bar_text(value: float) -> str:
    return f"{value:.2e}" if abs(value) < 1e-2 and value != 0 else f"{value:.3g}"


class RunLogger:
    """Progress bar + metrics.jsonl + TensorBoard for rank 0; a silent stand-in elsewhere."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int, desc: str):
        self.enabled = enabled
        if not enabled:
            return
        self.path = Path(run_dir) / METRICS_FILE
        _truncate_after(self.path, start_step)
        self.writer = _tensorboard_writer(Path(run_dir) / "tensorboard", start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def advance(self) -> None:
        if self.enabled:
            self.bar.update(1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
        self.bar.set_postfix({k: _bar_text(metrics[k]) for k in BAR_KEYS if k in metrics}, refresh=False)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self.writer is not None:
                self.writer.close()


def _tensorboard_writer(directory: Path, start_step: int):
    """A TensorBoard writer that drops events after `start_step` on resume; None (with a note)
    when the optional tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: bevt[tensorboard]
    except ImportError:
        log.info("tensorboard is not installed (pip install 'bevt[tensorboard]'): metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(str(directory), purge_step=start_step + 1 if start_step else None)


def _truncate_after(path: Path, step: int) -> None:
    """Keep the metric lines up to `step` (all of them on a fresh run: none exist)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except json.JSONDecodeError:  # the last line of a killed run can be cut short
            continue
    path.write_text("".join(kept))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metric lines of a run, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
