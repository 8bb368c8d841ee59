"""Tokenizer throughput: bevt's DalleTokenizer against the `dall_e` package's encoder, side by side.

Both get the same random weights (the package's init, converted to our names) and the same
112x112 frames (smooth random images: low-resolution noise upsampled). For each precision mode
it prints frames/s, the speed relative to the package in fp32, and the share of tokens equal to
the fp32 tokens. Without the `dall_e` package only bevt's rows are measured (noted in the output).

    python benchmarks/tokenizer.py --device cpu --frames 4 --batch 2 --repeats 1
    python benchmarks/tokenizer.py --device cuda --frames 512 --batch 128 --repeats 3 --compile

Use a frame count that is a multiple of the batch (one input shape, so compile runs once).

On CUDA the package's convs run in fp16 by default (its `use_float16`); its fp32 row switches that
off, its "as shipped" row keeps it. Convolutions may use TF32 in every fp32 row (PyTorch's cuDNN
default), the same for both implementations.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer, convert_official_state_dict, map_pixels


def smooth_frames(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 3, size, size) in [0, 1]: 8x8 noise upsampled, closer to photos than white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(encode, frames: torch.Tensor, batch: int, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """-> (frames/s of the best of `repeats` passes over all frames, ids of the last pass)."""
    encode(frames[:batch].to(device))  # warm-up: cuDNN / oneDNN algorithm choice, torch.compile
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        ids = [encode(frames[i : i + batch].to(device, non_blocking=True)) for i in range(0, len(frames), batch)]
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return len(frames) / best, torch.cat(ids).cpu()


def package_encoder(hidden: int, vocab_size: int, device: torch.device):
    """The `dall_e` package's encoder with its random init, or None when it is not installed."""
    try:
        from dall_e import Encoder
    except ImportError:
        return None
    torch.manual_seed(0)
    return Encoder(n_hid=hidden, vocab_size=vocab_size, device=device).eval()


def set_package_float16(encoder, enabled: bool) -> None:
    for module in encoder.modules():
        if hasattr(module, "use_float16") and module is not encoder.blocks.output.conv:
            module.use_float16 = enabled  # the package keeps the output conv in fp32 itself


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8, help="frames per pass")
    parser.add_argument("--batch", type=int, default=4, help="frames per encoder call")
    parser.add_argument("--size", type=int, default=112, help="tokenizer input side (half the model input)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best is reported")
    parser.add_argument("--hidden", type=int, default=256, help="dVAE width (256 = the released model)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (compiles during warm-up)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames = smooth_frames(args.frames, args.size, seed=0)

    reference = package_encoder(args.hidden, args.vocab, device)
    if reference is not None:
        state = convert_official_state_dict(reference.state_dict())
    else:
        print("note: the `dall_e` package is not installed; measuring bevt only, with its own random init")
        torch.manual_seed(0)
        state = DalleEncoder(args.hidden, 2, args.vocab).state_dict()

    def ours(precision: str, channels_last: bool, compile: bool = False):
        encoder = DalleEncoder(args.hidden, 2, args.vocab)
        encoder.load_state_dict(state)
        return DalleTokenizer(encoder, precision=precision, channels_last=channels_last, compile=compile).to(device).encode

    rows = []  # (name, callable)
    if reference is not None:
        def package(x):
            with torch.no_grad():
                return reference(map_pixels(x)).argmax(1)

        set_package_float16(reference, False)
        rows.append(("dall_e package, fp32", package))
    rows += [("bevt, fp32", ours("fp32", False)), ("bevt, fp32 + channels_last", ours("fp32", True))]
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        rows.append(("bevt, bf16 + channels_last", ours("bf16", True)))
    if device.type == "cuda":
        rows.append(("bevt, fp16 + channels_last", ours("fp16", True)))
    if args.compile:
        fastest = "fp16" if device.type == "cuda" else "bf16"
        rows.append((f"bevt, {fastest} + channels_last + compile", ours(fastest, True, compile=True)))

    results = []
    for name, encode in rows:
        fps, ids = measure(encode, frames, args.batch, args.repeats, device)
        results.append((name, fps, ids))
    if reference is not None and device.type == "cuda":  # the package's own default on CUDA, for reference
        set_package_float16(reference, True)
        fps, ids = measure(package, frames, args.batch, args.repeats, device)
        results.append(("dall_e package, as shipped (fp16 convs)", fps, ids))

    base_fps, fp32_ids = results[0][1], results[0][2]
    base_name = results[0][0]
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{args.frames} frames of {args.size}x{args.size}, batch {args.batch}, hidden {args.hidden}, "
          f"vocab {args.vocab}, {name_of_device}, torch {torch.__version__}")
    print(f"{'mode':42s} {'frames/s':>10s} {'vs ' + base_name.split(',')[0] + ' fp32':>18s} {'tokens = fp32':>14s}")
    for name, fps, ids in results:
        agreement = (ids == fp32_ids).float().mean().item()
        print(f"{name:42s} {fps:10.1f} {fps / base_fps:17.2f}x {agreement:13.2%}")


if __name__ == "__main__":
    main()
