"""Probe for the demo's open item: does the debug Video Swin learn the temporal task from scratch
when the synthetic object moves slower?

    .venv/bin/python scripts/probe_temporal_task.py 0.3     # motion at 0.3x the benchmark's speed
    .venv/bin/python scripts/probe_temporal_task.py 1.0 optim.lr=2e-3 optim.epochs=12   # + overrides

Writes a 64-px, 8-frame temporal task (64 train / 16 val clips per class) whose base speed is
scaled by the factor, finetunes the `demo_finetune` recipe from scratch (288 steps) and prints
normal / single-frame / shuffled top-1. Not imported by bevt.
"""

import shutil
import sys
import zlib

import torch

import bevt.data.synthetic as synthetic
from bevt.config import load_config
from bevt.eval.classify import evaluate
from bevt.train.main import train


def slowed_base(factor):
    """The benchmark's base clip with the motion scaled by `factor`: the same draws, rendered over
    frames / factor steps (speed is size / frames per step), of which the first `frames` are kept."""
    render = synthetic.render_temporal_base

    def slowed(rng, size, frames):
        return render(rng, size, round(frames / factor))[:frames]
    return slowed


def main(factor: float, out: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    synthetic.render_temporal_base = slowed_base(factor)
    paths = synthetic.make_synthetic_benchmark(f"{out}/data", seed=0, size=64, frames=8, images_per_class=4,
                                               val_images_per_class=1, videos_per_class=64,
                                               val_videos_per_class=16, workers=1)
    cfg = load_config("demo_finetune", [
        f"data.train={paths['temporal_train']}", f"data.val={paths['temporal_val']}",
        f"data.labels={paths['temporal_classes']}", "data.flip=false", "data.workers=0",
        "finetune.num_classes=6", "run.init_from=null", "optim.epochs=6", "optim.warmup_epochs=0.6",
        f"run.out={out}/finetune", *overrides,
    ])
    results = evaluate(cfg, train(cfg), temporal_test=True)["results"]
    print(f"speed x{factor}: " + ", ".join(f"{mode} {r['top1']:.1f}%" for mode, r in results.items()))


if __name__ == "__main__":
    factor = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    overrides = sys.argv[2:]
    out = f"/tmp/bevt_probe_speed_{factor}_{zlib.crc32(' '.join(overrides).encode()):08x}"
    shutil.rmtree(out, ignore_errors=True)
    main(factor, out, overrides)
