"""`bevt visualize`: what a pretrained model predicts behind the mask, as one PNG grid.

Rows (columns are frames of a clip; an image is one row of panels):
  input | masked input (grey = masked cells) | tokenizer reconstruction of the true tokens |
  reconstruction from the model's tokens | right / wrong masked tokens (green / red).
The model reconstruction keeps the tokenizer's true token at visible cells and takes the model's
prediction at masked cells (the MIM task itself), so it differs from the tokenizer row exactly
where the model got a masked token wrong. Reconstructions need a tokenizer with a decoder
(the VQ tokenizer, or DALL-E imported with decoder.pkl); otherwise those rows are left out.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import torch

from PIL import Image
from torchvision.transforms import v2

from bevt.config import DataConfig, MaskingConfig
from bevt.data.datasets import IMAGE_EXTENSIONS
from bevt.data.decode import read_clip
from bevt.data.sampling import IntervalSampler
from bevt.data.transforms import normalize, to_video, tokenizer_view
from bevt.errors import DataError, UsageError
from bevt.masking import CELL, build_mask_generator, mask_to_token_grid
from bevt.models.build import load_model_from_checkpoint
from bevt.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

MAX_COLUMNS = 8  # frames shown for a clip (evenly spaced)


def pyplot():
    """matplotlib.pyplot drawing to files (Agg); matplotlib is the optional extra bevt[viz]."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("figures need matplotlib: pip install 'bevt[viz]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_frames_u8(pixels: torch.Tensor) -> torch.Tensor:
    """float (3,H,W) or (3,T,H,W) in [0,1] -> uint8 (T,3,H,W), the layout of bevt.data.transforms."""
    clip = pixels.unsqueeze(1) if pixels.dim() == 3 else pixels
    return (clip.clamp(0, 1) * 255).round().to(torch.uint8).transpose(0, 1).contiguous()


def _cells_to_pixels(cells: torch.Tensor) -> torch.Tensor:
    """(T,h,w) -> (T,16h,16w): one token cell covers 16x16 input pixels."""
    return cells.repeat_interleave(CELL, dim=-2).repeat_interleave(CELL, dim=-1)


@torch.no_grad()
def make_reconstruction_figure(pretrainer, tokenizer, pixels: torch.Tensor, mask: torch.Tensor,
                               out_path: str | Path, title: str | None = None, tokenizer_resize: str = "pil") -> dict:
    """Write the PNG grid for one image (3,H,W) or clip (3,T,H,W) of float pixels in [0,1].

    `mask` is the cell mask the model sees: (H/16,W/16) for an image, (T/2,H/16,W/16) for a clip.
    `pretrainer` may be None (input, mask and tokenizer rows only). `tokenizer_resize` makes the
    tokenizer's half-size view as the run's training did (`data.tokenizer_resize`), so the true
    tokens are the targets it was trained on. Returns {"path", "masked_accuracy"} (None without
    a pretrainer).
    """
    plt = pyplot()
    is_clip = pixels.dim() == 4
    frames_u8 = _to_frames_u8(pixels.cpu())  # (T,3,H,W)
    num_frames, _, height, width = frames_u8.shape
    expected = (num_frames // 2, height // CELL, width // CELL) if is_clip else (height // CELL, width // CELL)
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit pixels {tuple(pixels.shape)} (one cell = 16x16 pixels)")
    token_mask = (mask_to_token_grid(mask) if is_clip else mask.unsqueeze(0)).cpu()  # (T,h,w)

    device = next(pretrainer.parameters()).device if pretrainer is not None else torch.device("cpu")
    tokenizer.to(device)
    tok_view = tokenizer_view(frames_u8, height // 2, tokenizer_resize).transpose(0, 1).to(device)  # (T,3,H/2,W/2)
    true_tokens = tokenizer.encode(tok_view).cpu()  # (T,h,w)

    shown = frames_u8.float() / 255  # (T,3,H,W)
    grey = torch.full_like(shown, 0.5)
    mask_px = _cells_to_pixels(token_mask).unsqueeze(1)  # (T,1,H,W)
    rows = {"input": shown, "masked input (grey = masked)": torch.where(mask_px, 0.3 * shown + 0.7 * grey, shown)}
    if tokenizer.can_decode:
        rows["tokenizer reconstruction"] = tokenizer.decode(true_tokens.to(device)).cpu()

    accuracy = None
    if pretrainer is not None:
        model_view = normalize(frames_u8)  # (3,T,H,W)
        model_view = (model_view if is_clip else model_view[:, 0]).unsqueeze(0).to(device)
        predicted = pretrainer.predict_tokens(model_view, mask.unsqueeze(0).to(device))[0].cpu()
        predicted = predicted if is_clip else predicted.unsqueeze(0)  # (T,h,w)
        hits = predicted == true_tokens
        accuracy = hits[token_mask].float().mean().item() if token_mask.any() else float("nan")
        if tokenizer.can_decode:
            mixed = torch.where(token_mask, predicted, true_tokens)
            rows["model: masked cells predicted"] = tokenizer.decode(mixed.to(device)).cpu()
        colour = torch.where(_cells_to_pixels(hits).unsqueeze(1), torch.tensor([0.1, 0.8, 0.2]).view(3, 1, 1),
                             torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1))  # (T,3,H,W) green / red
        rows["masked tokens: green right, red wrong"] = torch.where(mask_px, 0.5 * shown + 0.5 * colour, 0.4 * shown)

    columns = torch.linspace(0, num_frames - 1, min(num_frames, MAX_COLUMNS)).round().long().tolist()
    labels = list(rows)
    grid_rows, grid_cols = (len(rows), len(columns)) if is_clip else (1, len(rows))
    panel_width = 1.3 if is_clip else 1.7  # an image's panels sit side by side under wrapped titles
    fig, axes = plt.subplots(grid_rows, grid_cols, figsize=(panel_width * grid_cols, 1.6 * grid_rows), squeeze=False)
    for r, label in enumerate(labels):
        for c, frame in enumerate(columns):
            ax = axes[r, c] if is_clip else axes[0, r]
            ax.imshow(rows[label][frame].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(label if is_clip else textwrap.fill(label, 22), loc="left", fontsize=7)
            if is_clip and r == grid_rows - 1:
                ax.set_xlabel(f"frame {frame}", fontsize=6)
    summary = f"masked-token accuracy {accuracy:.0%}" if accuracy is not None else "tokenizer only (no checkpoint)"
    fig.suptitle(f"{title + ': ' if title else ''}{summary}, {int(token_mask.sum())} of {token_mask.numel()} cells masked",
                 fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return {"path": str(out_path), "masked_accuracy": accuracy}


def _read_input(path: Path, size: int, frames: int, interval: int) -> torch.Tensor:
    """An image -> (3,size,size), a video -> its centred clip (3,frames,size,size); float in [0,1].
    Short side resized to `size`, then a centre crop (the evaluation geometry)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        with Image.open(path) as image:
            frames_u8 = torch.as_tensor(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
            frames_u8 = frames_u8.view(1, image.height, image.width, 3)
    else:
        frames_u8 = torch.as_tensor(read_clip(str(path), IntervalSampler(frames, interval))[0])
    clip = v2.functional.center_crop(v2.functional.resize(to_video(frames_u8), size, antialias=True), size)
    pixels = clip.as_subclass(torch.Tensor).float().div(255).transpose(0, 1)  # (3,T,size,size)
    return pixels[:, 0] if path.suffix.lower() in IMAGE_EXTENSIONS else pixels


def visualize_file(input_path: str | Path, out_png: str | Path, checkpoint: str | Path | None = None,
                   tokenizer: str | Path | None = None, seed: int = 0) -> dict:
    """The figure for an image or video file: model, input size, clip length and masking come
    from the pretraining checkpoint's config; without a checkpoint, only the tokenizer rows."""
    if checkpoint is None and tokenizer is None:
        raise UsageError("give --checkpoint (a pretraining run) or --tokenizer (tokenizer rows only)")
    pretrainer, data, masking = None, DataConfig(), MaskingConfig()  # paper defaults: 16x224x224, tubes
    if checkpoint is not None:
        pretrainer, cfg = load_model_from_checkpoint(checkpoint)
        data, masking = cfg.data, cfg.masking
        if not hasattr(pretrainer, "predict_tokens"):
            raise UsageError(f"{checkpoint} is a finetuning checkpoint; visualize needs a pretraining one")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else pretrainer.tokenizer
    if pretrainer is not None and tok.vocab_size != pretrainer.token_head.out_features:
        raise UsageError(f"tokenizer {tokenizer} has {tok.vocab_size} codes, the model predicts {pretrainer.token_head.out_features}")

    path = Path(input_path)
    pixels = _read_input(path, data.size, data.frames, data.interval)
    cells = data.size // CELL
    generator = torch.Generator().manual_seed(seed)
    if pixels.dim() == 3:
        mask_gen = build_mask_generator("blockwise", (cells, cells), masking.ratio, masking.min_cells)
    else:
        mask_gen = build_mask_generator(masking.video, (data.frames // 2, cells, cells), masking.ratio,
                                        masking.min_cells, masking.tube_length, masking.wrap)
    return make_reconstruction_figure(pretrainer, tok, pixels, mask_gen(generator), out_png, title=path.name,
                                      tokenizer_resize=data.tokenizer_resize)


def run_visualize(args) -> int:
    result = visualize_file(args.input, args.out, checkpoint=args.checkpoint, tokenizer=args.tokenizer, seed=args.seed)
    accuracy = result["masked_accuracy"]
    print(f"wrote {result['path']}" + (f" (masked-token accuracy {accuracy:.1%})" if accuracy is not None else ""))
    return 0
