"""`bevt info`: parameters and multiply-accumulates per view of a model flavor.

Counted on the meta device (shapes only, no memory, no arithmetic), so even Swin-L at 32x224
takes seconds on a laptop. MACs = FLOPs / 2 from `torch.utils.flop_counter`, which counts
convolutions, linear layers and the attention matmuls; the paper's "GFLOPs" are these MACs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bevt.models import create_model, parse_window

# Used by the image stream (pretraining) only; a video classifier never touches them.
IMAGE_STREAM_ONLY = ("encoder.patch_embed_2d.", "encoder.mask_token")


def model_summary(name, frames=32, size=224, window_size=(8, 7, 7), num_classes=400):
    """{"params": video classifier parameters, "image_stream_params": extra pretraining-only
    parameters, "macs": multiply-accumulates of one forward on a (1,3,frames,size,size) view}."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, window_size=window_size).eval()
        video = torch.empty(1, 3, frames, size, size)
    params = dict(model.named_parameters())
    image_only = sum(p.numel() for k, p in params.items() if k.startswith(IMAGE_STREAM_ONLY))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(video)
    return {
        "params": sum(p.numel() for p in params.values()) - image_only,
        "image_stream_params": image_only,
        "macs": counter.get_total_flops() / 2,
    }


def run_info(args):
    """Print parameters (M) and GMACs per view for `bevt info NAME`."""
    window = parse_window(args.window)
    summary = model_summary(args.name, args.frames, args.size, window, args.num_classes)
    print(f"{args.name}: window {'x'.join(map(str, window))}, {args.num_classes} classes, "
          f"view {args.frames}x{args.size}x{args.size}")
    print(f"  parameters     {summary['params'] / 1e6:.2f} M"
          f"  (+{summary['image_stream_params'] / 1e3:.1f} K image-stream parameters used in pretraining)")
    print(f"  GMACs per view {summary['macs'] / 1e9:.1f}")
    return 0
