"""Probe for the demo's temporal task: does the debug Video Swin learn it from scratch, and what
about the synthetic clips decides that?

    .venv/bin/python scripts/probe_temporal_task.py                          # the benchmark as it is
    .venv/bin/python scripts/probe_temporal_task.py --look rolling           # the earlier clips
    .venv/bin/python scripts/probe_temporal_task.py --speed 0.3 optim.lr=2e-3  # slower motion + overrides

Writes a 64-px, 8-frame temporal task (64 train / 16 val clips per class), finetunes the
`demo_finetune` recipe from scratch (6 epochs = 288 steps unless overridden, e.g.
optim.epochs=15) and prints normal / single-frame / shuffled top-1. `--look rolling` renders the
benchmark's earlier temporal clips (a textured object of any colour rolling over a mid-grey
field); `--speed` scales the motion. Not imported by bevt.
"""

import argparse
import shutil
import zlib

import numpy as np
import torch

import bevt.data.synthetic as synthetic
from bevt.config import load_config
from bevt.eval.classify import evaluate
from bevt.train.main import train


def rolling_base(rng, size, frames):
    """The earlier temporal base clip: a textured object of random colour rolling right on a
    mid-grey field (the edge contrast changes sign from clip to clip and channel to channel)."""
    look = synthetic._random_look(rng, size, synthetic.SHAPES[rng.integers(len(synthetic.SHAPES))], rng.random(),
                                  synthetic.TEXTURES[rng.integers(1, 3)])
    background = synthetic._background(rng, size)
    x, y = rng.uniform(0, size, 2)
    speed = rng.uniform(0.6, 0.9) * size / frames
    angle = rng.uniform(0, 2 * np.pi)
    spin = speed / look.radius
    return np.stack([synthetic.render_frame(background, look, x + t * speed, y, angle + t * spin)
                     for t in range(frames)])


def scaled(render, factor):
    """`render` with the motion scaled by `factor`: the same draws over frames / factor steps
    (speed is size / frames per step), of which the first `frames` are kept."""
    def slowed(rng, size, frames):
        return render(rng, size, round(frames / factor))[:frames]
    return slowed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--look", choices=("current", "rolling"), default="current")
    parser.add_argument("--speed", type=float, default=1.0, help="motion speed relative to the benchmark's")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo_finetune recipe")
    args = parser.parse_args()
    out = f"/tmp/bevt_probe_{args.look}_{args.speed}_{zlib.crc32(' '.join(args.overrides).encode()):08x}"
    shutil.rmtree(out, ignore_errors=True)

    torch.set_num_threads(1)
    render = rolling_base if args.look == "rolling" else synthetic.render_temporal_base
    synthetic.render_temporal_base = scaled(render, args.speed)
    paths = synthetic.make_synthetic_benchmark(f"{out}/data", seed=0, size=64, frames=8, images_per_class=4,
                                               val_images_per_class=1, videos_per_class=64,
                                               val_videos_per_class=16, workers=1)
    cfg = load_config("demo_finetune", [
        f"data.train={paths['temporal_train']}", f"data.val={paths['temporal_val']}",
        f"data.labels={paths['temporal_classes']}", "data.flip=false", "data.workers=0",
        "finetune.num_classes=6", "run.init_from=null", "optim.epochs=6", "optim.warmup_epochs=0.6",
        f"run.out={out}/finetune", *args.overrides,
    ])
    results = evaluate(cfg, train(cfg), temporal_test=True)["results"]
    print(f"look {args.look}, speed x{args.speed}: "
          + ", ".join(f"{mode} {r['top1']:.1f}%" for mode, r in results.items()))


if __name__ == "__main__":
    main()
