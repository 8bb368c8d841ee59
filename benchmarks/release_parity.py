"""Compare bevt with the released BEVT code on random weights: token logits of both streams.

Needs a checkout of the authors' release (github.com/xyzforever/BEVT); its model file is imported
from there (mmcv / mmaction are replaced by stand-ins for the three names it imports), never copied:

    python benchmarks/release_parity.py --release /path/to/BEVT [--embed-dim 96 --depths 2,2,6,2 --heads 3,6,12,24]

It builds the released `SwinTransformerBEVT` (window 8x7x7, patch_norm as in the released config)
with random weights, saves its state dict under the released recogniser's names (`backbone.*`,
`cls_head.lm_head`, a dVAE stand-in), converts it with `from_official(pretraining=True)`, and
prints max |bevt - released| of the image- and video-stream token logits for
`image_shift_mask` official and standard.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

from bevt.checkpoint import load_strict
from bevt.masking import BlockwiseMaskGenerator, TubeMaskGenerator
from bevt.models import create_model
from bevt.models.convert import check_converted, from_official
from bevt.models.pretrainer import BEVTPretrainer
from bevt.tokenizers.base import Tokenizer

RELEASED_FILE = "mmaction/models/backbones/swin_transformer_bevt.py"


def import_released_backbone(release: Path):
    """The release's SwinTransformerBEVT, with stand-ins for the mmcv / mmaction names it imports."""
    def module(name, **attributes):
        created = types.ModuleType(name)
        created.__path__ = []
        created.__dict__.update(attributes)
        sys.modules[name] = created

    unused = lambda *args, **kwargs: None  # noqa: E731 - checkpoint loaders the comparison never calls
    module("mmcv")
    module("mmcv.runner", load_checkpoint=unused, _load_checkpoint=unused, load_state_dict=unused)
    module("mmaction")
    module("mmaction.utils", get_root_logger=lambda: None)
    module("mmaction.models")
    module("mmaction.models.builder", BACKBONES=types.SimpleNamespace(register_module=lambda: (lambda cls: cls)))
    module("mmaction.models.backbones")
    name = "mmaction.models.backbones.swin_transformer_bevt"
    spec = importlib.util.spec_from_file_location(name, release / RELEASED_FILE)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    return loaded.SwinTransformerBEVT


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True, help="checkout of xyzforever/BEVT")
    parser.add_argument("--embed-dim", type=int, default=48)
    parser.add_argument("--depths", default="2,2,2,2")
    parser.add_argument("--heads", default="2,4,8,16")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=512)
    args = parser.parse_args()
    depths, heads = [int(n) for n in args.depths.split(",")], [int(n) for n in args.heads.split(",")]
    torch.manual_seed(0)

    released = import_released_backbone(args.release)(
        patch_size=(2, 4, 4), embed_dim=args.embed_dim, depths=depths, num_heads=heads, window_size=(8, 7, 7),
        patch_norm=True, drop_path_rate=0.0)
    released.init_weights()
    with torch.no_grad():  # far from the init, so a wrong bias row, mask or column order shows
        for name, param in released.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(0, 1.0)
            elif "fpn" in name or "lm_down" in name:
                param.normal_(0, 0.02)
            elif "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    released.eval()
    lm_head = torch.nn.Linear(released.num_features, args.vocab)
    state = {f"backbone.{k}": v for k, v in released.state_dict().items()}
    state.update({"cls_head.lm_head.weight": lm_head.weight.data, "cls_head.lm_head.bias": lm_head.bias.data,
                  "cls_head.vae_encoder.blocks.input.w": torch.zeros(256, 3, 7, 7)})
    converted = from_official(state, pretraining=True)
    print("converted:", check_converted(converted))

    g = torch.Generator().manual_seed(1)
    image, video = torch.randn(2, 3, 224, 224, generator=g), torch.randn(2, 3, args.frames, 224, 224, generator=g)
    image_cells = torch.stack([BlockwiseMaskGenerator((14, 14), 98)(generator=g) for _ in range(2)])
    video_cells = torch.stack([TubeMaskGenerator((args.frames // 2, 14, 14), 98)(generator=g) for _ in range(2)])
    vocabulary = Tokenizer()
    vocabulary.vocab_size = args.vocab
    with torch.no_grad():
        expected_image = lm_head(released(image, image_cells, is_img=True)).view(2, 14, 14, -1)
        expected_video = lm_head(released(video, video_cells)).view(2, args.frames, 14, 14, -1)
        for mode in ("official", "standard"):
            encoder = create_model("swin_t", embed_dim=args.embed_dim, depths=depths, num_heads=heads,
                                   window_size=(8, 7, 7), image_shift_mask=mode)
            model = BEVTPretrainer(encoder, vocabulary).eval()
            load_strict(model, converted, "the converted released state dict")
            image_logits = model.token_logits(model.decode_features(image, image_cells))
            video_logits = model.token_logits(model.decode_features(video, video_cells))
            relative = (image_logits - expected_image).norm() / expected_image.norm()
            print(f"image_shift_mask={mode}: image max|d| {(image_logits - expected_image).abs().max():.2e} "
                  f"(relative {relative:.2e}), video max|d| {(video_logits - expected_video).abs().max():.2e}; "
                  f"logits up to {expected_image.abs().max():.2f}")


if __name__ == "__main__":
    main()
