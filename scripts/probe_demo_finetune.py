"""Probe a finished demo: finetune one of its pretrained models (or none) on one task again, with
recipe overrides, and print normal / single-frame / shuffled top-1 and the tubelet asymmetry.

    .venv/bin/python scripts/probe_demo_finetune.py demo_out BEVT temporal optim.layer_decay=1.0
    .venv/bin/python scripts/probe_demo_finetune.py demo_out none temporal --steps 1440

Uses the demo's benchmark, pretraining checkpoints, recipe and seed; writes under
DEMO/probes/. Not imported by bevt.
"""

import argparse
import json
import shutil
import zlib
from pathlib import Path

import torch

from bevt import demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("init", help="a pretraining run of the demo (BEVT-I, BEVT, BEVT-V) or 'none'")
    parser.add_argument("task", choices=demo.TASKS)
    parser.add_argument("--steps", type=int, help="finetuning steps (default: the full demo's)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo_finetune recipe")
    args = parser.parse_args()

    state = json.loads((args.demo_dir / "results.json").read_text())
    outputs, seed = state["outputs"], state["settings"]["seed"]
    pretrained = {name: outputs[key] for key in outputs for name in demo.PRETRAIN_RUNS
                  if key.startswith(f"pretrain {name} (")}
    init = None if args.init == "none" else pretrained[args.init]
    steps = args.steps or demo.FULL.finetune_steps[args.task]
    tag = f"{args.init}_{args.task}_{steps}_{zlib.crc32(' '.join(args.overrides).encode()):08x}"
    out = args.demo_dir / "probes" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    torch.set_num_threads(1)
    scratch = () if init else (f"optim.lr={demo.SCRATCH_LR}",)  # as the demo does; later overrides win
    run = demo.finetune(out, args.task, init["checkpoint"] if init else None, outputs["benchmark"], steps, seed,
                        (*scratch, *args.overrides))
    asymmetry = demo.tubelet_asymmetry_of_runs(init, run, seed)
    print(f"{args.init} -> {args.task}, {steps} steps {' '.join(args.overrides)}: "
          + ", ".join(f"{mode} {top1:.1f}%" for mode, top1 in run["top1"].items())
          + f"; tubelet asymmetry {asymmetry['start']:.2f} -> {asymmetry['end']:.2f}")


if __name__ == "__main__":
    main()
