"""Training throughput of a joint BEVT step (image batch + video batch), per precision, side by side.

Runs the training loop's own `train_step` (forward, backward, clipping, AdamW) of the joint
pretrainer on random tensors shaped like the loaders' batches, with masks from the real
generators and a tokenizer with random weights: no video decoding, no datasets, so it runs on a
bare GPU machine without PyAV. Reports clips/s, images/s and steps/s (median of the rounds), the
share of a step spent in the tokenizer, the forward+backward pass and the optimizer, and with a
known peak the model FLOP utilisation:
FLOPs of one step counted with torch.utils.flop_counter (the trained network's forward and
backward = "model"; plus the tokenizer's forward = "all") over peak x step time; and the host's
page faults and system CPU time per step, and on CPU the time taken to put the heap on huge
pages after warm-up, as `bevt train` does after its first step (see bevt/host_memory.py).

    python benchmarks/train_throughput.py                      # tiny_joint recipe, CPU, fp32 vs bf16
    python benchmarks/train_throughput.py --device cuda --model swin_b --precisions bf16,fp16
    python benchmarks/train_throughput.py --precisions fp32 --baseline-commit ba8cb1a --rounds 5
    python benchmarks/train_throughput.py --precisions fp32 --compile   # run.compile's blocks

`--baseline-commit` times an older commit side by side: it exports that commit with `git archive`
into a temporary directory and, round after round (alternating which goes first), runs that
commit's own copy of this script (consistent with its own API) and this checkout's script, each
in a fresh subprocess with PYTHONPATH on its `src`, with identical arguments and one round each;
it prints both steps/s, the median of the per-round ratios and each side's step split.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bevt.config import load_config
from bevt.host_memory import back_heap_with_huge_pages, keep_freed_host_memory
from bevt.masking import build_mask_generator
from bevt.train.logging import StepTimer
from bevt.distributed import autocast
from bevt.train.loop import train_step
from bevt.train.optim import FUSED_ADAMW_DEVICES, build_optimizer
from bevt.models.build import build_model
from bevt.train.tasks import PretrainTask

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of the GPUs we report on.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="swin_b etc.: the Swin-B joint recipe with this flavor; default: tiny_joint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, timed alternately")
    p.add_argument("--video-batch", type=int, default=None, help="clips per step (default: the recipe's)")
    p.add_argument("--image-batch", type=int, default=None, help="images per step (default: the recipe's)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="compile every Swin block as run.compile=true does; prints the warm-up time, compilation included")
    p.add_argument("--steps", type=int, default=5, help="timed steps per precision and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--baseline-commit", default=None,
                   help="git commit to time side by side with this checkout (first precision only; see above)")
    return p.parse_args(argv)


def benchmark_config(args):
    if args.model is None:
        recipe, overrides = "tiny_joint", []
    else:
        recipe, overrides = "swin_b_joint_in1k_k400", [f"model.name={args.model}"]
    if args.video_batch:
        overrides.append(f"data.video_batch_size={args.video_batch}")
    if args.image_batch:
        overrides.append(f"data.image_batch_size={args.image_batch}")
    overrides.append(f"model.use_checkpoint={args.grad_checkpointing}")
    return load_config(recipe, overrides)


def random_tokenizer(cfg):
    """Untrained weights of the recipe's kind of tokenizer: DALL-E's dVAE for the paper recipes."""
    if cfg.model.name == "debug":
        from bevt.tokenizers.vq import VQTokenizer

        return VQTokenizer(width=8, codebook_size=32).eval().requires_grad_(False)
    from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer

    return DalleTokenizer(DalleEncoder())


class RepeatedBatch:
    """The same batch every step (data loading is not what is measured)."""

    batches_per_epoch = 1

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch


def random_streams(cfg, device):
    data, masking = cfg.data, cfg.masking
    grid = (data.size // 16, data.size // 16)
    images = build_mask_generator("blockwise", grid, ratio=masking.ratio, min_cells=masking.min_cells)
    clips = build_mask_generator(masking.video, (data.frames // 2, *grid), ratio=masking.ratio,
                                 min_cells=masking.min_cells, tube_length=masking.tube_length)
    b, n, t, s = data.image_batch_size, data.video_batch_size, data.frames, data.size
    return {
        "image": RepeatedBatch({
            "image": torch.randn(b, 3, s, s, device=device),
            "image_tok": torch.rand(b, 3, s // 2, s // 2, device=device),
            "mask": torch.stack([images() for _ in range(b)]),  # on the host, as the loader makes it
        }),
        "video": RepeatedBatch({
            "video": torch.randn(n, 3, t, s, s, device=device),
            "video_tok": torch.rand(n, 3, t, s // 2, s // 2, device=device),
            "mask": torch.stack([clips() for _ in range(n)]),
        }),
    }


def count_flops(model, task, precision, device):
    """FLOPs of one step: the trained network forward + backward, and the tokenizer forward."""
    batch = task.next_batch()
    with FlopCounterMode(display=False) as counter:
        with autocast(precision, device):
            out = task.forward(model, batch)
        out["loss"].backward()
    model.zero_grad(set_to_none=True)
    total = counter.get_total_flops()
    with FlopCounterMode(display=False) as tokenizer_counter:
        for stream in ("image", "video"):
            model.target_tokens(batch[stream][f"{stream}_tok"], batch[stream]["host_mask"].mask)
    return total - tokenizer_counter.get_total_flops(), total


REPO = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^\s*(\w+):\s+([\d.]+) steps/s.*\|\s*(.*)$")


def run_script(root: Path, argv: list[str]) -> tuple[float, str]:
    """Run root/benchmarks/train_throughput.py with PYTHONPATH=root/src -> (steps/s, step split)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "train_throughput.py"), *argv],
                            env=env, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if match := STEP_LINE.match(line):
            host = next((h for h in result.stdout.splitlines() if h.startswith("host: ")), "")
            return float(match[2]), " | ".join(filter(None, [match[3].split("|")[0].strip(), host]))
    raise RuntimeError(f"{root}: no steps/s line in the benchmark's output:\n{result.stdout}\n{result.stderr}")


def compare_with_commit(args) -> None:
    """This checkout against `args.baseline_commit`, one fresh subprocess per side and round."""
    precision = args.precisions.split(",")[0]
    passed = ["--device", args.device, "--precisions", precision, "--rounds", "1",
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for option, value in (("--model", args.model), ("--video-batch", args.video_batch), ("--image-batch", args.image_batch)):
        if value:
            passed += [option, str(value)]
    if args.grad_checkpointing:
        passed.append("--grad-checkpointing")
    if args.compile:
        passed.append("--compile")
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", args.baseline_commit],
                         capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"bevt-{args.baseline_commit}-") as baseline_dir:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(baseline_dir, filter="data")
        sides = {"this checkout": REPO, f"commit {args.baseline_commit}": Path(baseline_dir)}
        results = {name: [] for name in sides}
        for round_index in range(args.rounds):
            for name in list(sides)[:: 1 if round_index % 2 == 0 else -1]:  # alternate which goes first
                results[name].append(run_script(sides[name], passed))
            print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1][0]:.3f} steps/s" for n, r in results.items()),
                  flush=True)
    (new, new_runs), (old, old_runs) = results.items()
    ratios = [a[0] / b[0] for a, b in zip(new_runs, old_runs)]
    print(f"{precision}, {' '.join(passed)}: median of {args.rounds} alternating rounds")
    for name, runs in results.items():
        median_run = sorted(runs)[len(runs) // 2]
        print(f"  {name:<24} {statistics.median(r[0] for r in runs):7.3f} steps/s  "
              f"(min {min(r[0] for r in runs):.3f}, max {max(r[0] for r in runs):.3f})  | {median_run[1]}")
    print(f"  {new} / {old}: x{statistics.median(ratios):.2f} (median of per-round ratios; "
          f"ratio of medians x{statistics.median(r[0] for r in new_runs) / statistics.median(r[0] for r in old_runs):.2f})")


def main(argv=None):
    args = parse_args(argv)
    if args.baseline_commit:
        compare_with_commit(args)
        return
    device = torch.device(args.device)
    if device.type == "cpu":  # as `bevt train` does on the CPU
        keep_freed_host_memory()
    cfg = benchmark_config(args)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer=random_tokenizer(cfg)).to(device).train()
    optimizer = build_optimizer(model, cfg.optim, tuple(len(s.blocks) for s in model.encoder.layers),
                                fused=device.type in FUSED_ADAMW_DEVICES)
    if args.compile:
        model.encoder.compile_blocks()
    task = PretrainTask(cfg, random_streams(cfg, device), device)
    precisions = args.precisions.split(",")
    scalers = {p: torch.amp.GradScaler(device.type, enabled=p == "fp16") for p in precisions}
    timers = {p: StepTimer(device) for p in precisions}

    def run(precision, steps):
        for _ in range(steps):
            train_step(model, task, optimizer, scalers[precision], precision, device, 1, cfg.optim.clip_grad,
                       timers[precision])
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup_started = time.perf_counter()
    for precision in precisions:
        run(precision, args.warmup)
        timers[precision].pop()
    warmup_seconds = time.perf_counter() - warmup_started
    huge_pages = ""
    if device.type == "cpu":  # as `bevt train` does after its first step
        started = time.perf_counter()
        advised = back_heap_with_huge_pages()
        huge_pages = f"; heap on huge pages: {advised / 2**20:.0f} MiB in {time.perf_counter() - started:.2f} s"
    seconds = {p: [] for p in precisions}
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.rounds):
        for precision in precisions:
            started = time.perf_counter()
            run(precision, args.steps)
            seconds[precision].append((time.perf_counter() - started) / args.steps)
    usage_after = resource.getrusage(resource.RUSAGE_SELF)

    data = cfg.data
    name = args.model or "tiny_joint (debug)"
    print(f"{name} joint step on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}: "
          f"{data.video_batch_size} clips {data.frames}x{data.size}x{data.size} + {data.image_batch_size} images "
          f"{data.size}x{data.size}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
    model_flops, all_flops = count_flops(model, task, precisions[0], device)
    print(f"FLOPs per step: {model_flops / 1e9:.1f} G model (fwd+bwd), {all_flops / 1e9:.1f} G with the tokenizer")
    reference = statistics.median(seconds[precisions[0]])
    for precision in precisions:
        step = statistics.median(seconds[precision])
        split = {k.removeprefix("time_"): v for k, v in timers[precision].pop().items() if k != "time_data"}
        line = (f"{precision:>5}: {1 / step:7.3f} steps/s  {data.video_batch_size / step:8.2f} clips/s  "
                f"{data.image_batch_size / step:8.2f} images/s  x{reference / step:.2f} vs {precisions[0]}  | "
                + "  ".join(f"{k} {v / sum(split.values()):.0%}" for k, v in split.items()))
        if peak:
            line += f"  | MFU {model_flops / step / (peak * 1e12):.1%} (with tokenizer {all_flops / step / (peak * 1e12):.1%})"
        print(line)
    if args.compile:
        print(f"compiled blocks: warm-up ({args.warmup} steps per precision, compilation included) {warmup_seconds:.1f} s")
    timed_steps = args.rounds * args.steps * len(precisions)
    print(f"host: {(usage_after.ru_minflt - usage_before.ru_minflt) / timed_steps:.0f} page faults and "
          f"{(usage_after.ru_stime - usage_before.ru_stime) / timed_steps * 1e3:.1f} ms system CPU time per timed step"
          + huge_pages)
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
