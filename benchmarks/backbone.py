"""Forward+backward time and peak memory of bevt's Video Swin vs torchvision's swin3d, side by side.

Both models get the same weights (`bevt.convert.from_torchvision`) and the same input; the runs
alternate between the two and the median of `--repeats` is reported. bevt is built with
`reference_bias_slicing=True` so the logits must match torchvision's (checked first); the
switch changes which bias rows are read, not the cost. Stochastic depth and the head dropout are
off in both so every run does the same work.

Peak memory is the most memory held during one step above the level at its start (activations,
temporaries and gradients; weights and input excluded): on CUDA from the caching allocator's
peak statistics, on CPU from the running total of PyTorch's CPU allocator in torch.profiler's
allocation events (profile_memory=True), measured in a separate, untimed step.

    python benchmarks/backbone.py                                   # swin_t 2x3x16x112x112 fp32 CPU
    python benchmarks/backbone.py --keep-freed-memory               # glibc set as `bevt train` sets it on CPU
    python benchmarks/backbone.py --device cuda --dtype bf16 --batch 8 --frames 32 --size 224

Imports only torch, torchvision, timm and bevt's model code (no video decoding), so it runs on a
bare GPU machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torchvision.ops import StochasticDepth

from bevt.checkpoint import load_strict
from bevt.host_memory import back_heap_with_huge_pages, keep_freed_host_memory
from bevt.models.convert import from_torchvision
from bevt.models import create_model
from bevt.models import window_attention as attention_module

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="swin_t", choices=["swin_t", "swin_s", "swin_b"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16/fp16 run under autocast")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=7, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--op-split", action="store_true",
                   help="also profile one untimed step of each model: the share of self time per op kind")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: keep freed memory in glibc's heap for reuse and back the heap with huge pages "
                        "after warm-up, as `bevt train` does on CPU (bevt/host_memory.py); default: glibc's "
                        "own thresholds")
    p.add_argument("--cpu-attention", default="kernel", choices=["kernel", "sdpa", "both"],
                   help="bevt's CPU training attention: its kernel, SDPA's own path, or both side by side")
    return p.parse_args(argv)


def build_pair(name, device):
    """torchvision swin3d and bevt's classifier with identical weights, both in train mode."""
    reference = getattr(torchvision.models.video, name.replace("swin_", "swin3d_"))(num_classes=400)
    for module in reference.modules():
        if isinstance(module, StochasticDepth):
            module.p = 0.0
    ours = create_model(name, num_classes=400, reference_bias_slicing=True, head_dropout=0.0)
    load_strict(ours, from_torchvision(reference.state_dict()), "converted")
    return reference.to(device).train(), ours.to(device).train()


def train_step(model, video, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(video.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(video)
    logits.float().square().mean().backward()
    if video.device.type == "cuda":
        torch.cuda.synchronize()
    return logits.detach().float()


def peak_memory_bytes(model, video, dtype):
    """Most bytes held during one step above the level at its start."""
    model.zero_grad(set_to_none=True)
    if video.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        train_step(model, video, dtype)
        return torch.cuda.max_memory_allocated() - start
    from torch._C._profiler import _EventType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, video, dtype)
    # total_allocated: the CPU allocator's running total after each allocation event; it carries
    # over between profiling sessions, so measure from its level just before the step's first event
    stack, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    events.sort()
    start = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - start


# Op kinds of the --op-split table: aten op names -> the kind they count towards.
OP_KINDS = {
    "linear layers (mm, addmm)": ("aten::mm", "aten::addmm"),
    "attention products (bmm, baddbmm)": ("aten::bmm", "aten::baddbmm"),
    "SDPA forward kernels": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                             "aten::_scaled_dot_product_flash_attention", "aten::_efficient_attention_forward"),
    "copies and concatenation": ("aten::copy_", "aten::cat", "aten::index_select", "aten::roll"),
    "GELU": ("aten::gelu", "aten::gelu_backward"),
    "LayerNorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
}


def op_split(model, video, dtype) -> dict[str, float]:
    """Share of one step's self CPU time per op kind (the rest: every other op and its overhead)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model, video, dtype)
    self_time = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(self_time.values())
    split = {kind: sum(self_time.get(op, 0) for op in ops) / total for kind, ops in OP_KINDS.items()}
    return {**split, "everything else": 1 - sum(split.values())}


def main(argv=None):
    args = parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_host_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    reference, ours = build_pair(args.model, device)
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    # name -> (model, whether bevt's CPU attention kernel is on while it runs)
    models = {f"torchvision {args.model.replace('swin_', 'swin3d_')}": (reference, True)}
    if args.cpu_attention in ("kernel", "both"):
        models[f"bevt {args.model}"] = (ours, True)
    if args.cpu_attention in ("sdpa", "both"):
        models[f"bevt {args.model} (SDPA)"] = (ours, False)

    def step(name):
        model, attention_module.USE_CPU_KERNEL = models[name]
        return train_step(model, video, dtype)

    diff = max((step(name) - step(next(iter(models)))).abs().max().item() for name in list(models)[1:])
    for _ in range(args.warmup):
        for name in models:
            step(name)
    if args.keep_freed_memory:  # the heap both models share, as `bevt train` does after its first step
        back_heap_with_huge_pages()
    times = {name: [] for name in models}
    for i in range(args.repeats):
        for name in list(models)[:: 1 if i % 2 == 0 else -1]:  # alternate which model goes first
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    peaks = {}
    for name, (model, attention_module.USE_CPU_KERNEL) in models.items():
        peaks[name] = peak_memory_bytes(model, video, dtype)
    attention_module.USE_CPU_KERNEL = True

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.model} {args.batch}x3x{args.frames}x{args.size}x{args.size} {args.dtype} on {device}{threads}: "
          f"forward+backward, median of {args.repeats} alternating runs")
    for name in models:
        print(f"  {name:<22} {statistics.median(times[name]) * 1e3:9.1f} ms  (min {min(times[name]) * 1e3:.1f})"
              f"  peak {peaks[name] / 2**20:8.1f} MiB")
    ref_name, *our_names = models
    for our_name in our_names:
        time_ratio = statistics.median(times[our_name]) / statistics.median(times[ref_name])
        # each round runs all back to back, so its ratio is robust to load that drifts between rounds
        round_ratio = statistics.median(ours / ref for ours, ref in zip(times[our_name], times[ref_name]))
        print(f"  {our_name}/torchvision: time {time_ratio:.2f}x (median of per-round ratios {round_ratio:.2f}x),"
              f" peak memory {peaks[our_name] / peaks[ref_name]:.2f}x")
    print(f"  max |logit difference| to torchvision {diff:.1e}")
    if args.op_split:
        for name, (model, attention_module.USE_CPU_KERNEL) in models.items():
            split = op_split(model, video, dtype)
            print(f"  {name} self time: " + ", ".join(f"{kind} {share:.0%}" for kind, share in split.items()))
        attention_module.USE_CPU_KERNEL = True


if __name__ == "__main__":
    main()
