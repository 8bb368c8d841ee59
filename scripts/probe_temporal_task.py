"""Probe for the demo's open item: does the debug Video Swin learn the temporal task from scratch
when the synthetic object moves slower?

    .venv/bin/python scripts/probe_temporal_task.py 0.3     # motion at 0.3x the benchmark's speed

Writes a 64-px, 8-frame temporal task (64 train / 16 val clips per class) whose base speed is
scaled by the factor, finetunes the `demo_finetune` recipe from scratch (288 steps) and prints
normal / single-frame / shuffled top-1. Not imported by bevt.
"""

import sys

import numpy as np
import torch

import bevt.data.synthetic as synthetic
from bevt.config import load_config
from bevt.eval.classify import evaluate
from bevt.train.main import train


def slowed_base(factor):
    def render(rng, size, frames):
        look = synthetic._random_look(rng, size, synthetic.SHAPES[rng.integers(len(synthetic.SHAPES))], rng.random(),
                                      synthetic.TEXTURES[rng.integers(1, 3)])
        background = synthetic._background(rng, size)
        x, y = rng.uniform(0, size, 2)
        speed = rng.uniform(0.6, 0.9) * size / frames * factor
        angle, spin = rng.uniform(0, 2 * np.pi), speed / look.radius
        return np.stack([synthetic.render_frame(background, look, x + t * speed, y, angle + t * spin)
                         for t in range(frames)])
    return render


def main(factor: float, out: str) -> None:
    torch.set_num_threads(1)
    synthetic.render_temporal_base = slowed_base(factor)
    paths = synthetic.make_synthetic_benchmark(f"{out}/data", seed=0, size=64, frames=8, images_per_class=4,
                                               val_images_per_class=1, videos_per_class=64,
                                               val_videos_per_class=16, workers=1)
    cfg = load_config("demo_finetune", [
        f"data.train={paths['temporal_train']}", f"data.val={paths['temporal_val']}",
        f"data.labels={paths['temporal_classes']}", "data.flip=false", "data.workers=0",
        "finetune.num_classes=6", "run.init_from=null", "optim.epochs=6", "optim.warmup_epochs=0.6",
        f"run.out={out}/finetune",
    ])
    results = evaluate(cfg, train(cfg), temporal_test=True)["results"]
    print(f"speed x{factor}: " + ", ".join(f"{mode} {r['top1']:.1f}%" for mode, r in results.items()))


if __name__ == "__main__":
    factor = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    main(factor, f"/tmp/bevt_probe_speed_{factor}")
