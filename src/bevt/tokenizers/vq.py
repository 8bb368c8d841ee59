"""bevt's own trainable VQ tokenizer: for users without DALL-E weights and for CPU runs.

A small conv autoencoder with 8x downsampling (so it sees the half-size view like the dVAE and
gives the same H/16 x W/16 target grid) around vector-quantize-pytorch's `VectorQuantize`: codebook
learned by EMA, initialised by k-means on the first batch, and codes that fall out of use
(EMA count below `dead_code_threshold`) revived from the current batch.
`train_vq_tokenizer` trains one (the CLI `bevt tokenizer train` and the demo both call it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm
from vector_quantize_pytorch import VectorQuantize

from bevt.checkpoint import load_strict, load_weights_file
from bevt.errors import CheckpointError, DataError
from bevt.tokenizers.base import Tokenizer, frozen_inference, read_tokenizer_json, refuse_to_overwrite, write_tokenizer_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class ResidualBlock(nn.Module):
    """x + conv1x1(silu(conv3x3(silu(x)))): lets the coarsest level mix neighbours without slowing training."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.silu(self.conv3(F.silu(x))))


class VQTokenizer(Tokenizer):
    """Conv encoder -> VectorQuantize -> conv decoder; pixels in [0, 1], one token per 8x8 pixels.

    Deliberately shallow (three stride-2 convs of widths width, 2*width, 2*width, one residual
    block at /8, and the mirror image with transposed convs) so it trains in about a minute on
    a CPU at 32x32; deeper stacks without normalisation barely moved in the same number of steps.
    """

    def __init__(
        self,
        width: int = 64,
        codebook_size: int = 512,
        code_dim: int = 32,
        ema_decay: float = 0.9,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
    ):
        super().__init__()
        self.config = {
            "width": width,
            "codebook_size": codebook_size,
            "code_dim": code_dim,
            "ema_decay": ema_decay,
            "dead_code_threshold": dead_code_threshold,
            "commitment_weight": commitment_weight,
        }
        self.vocab_size = codebook_size
        self.encoder = nn.Sequential(  # (N, 3, h, w) -> (N, code_dim, h/8, w/8)
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1),
            ResidualBlock(2 * width),
            nn.SiLU(),
            nn.Conv2d(2 * width, code_dim, 1),
        )
        self.quantizer = VectorQuantize(
            dim=code_dim,
            codebook_size=codebook_size,
            decay=ema_decay,
            kmeans_init=True,
            threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight,
            accept_image_fmap=True,
        )
        self.decoder = nn.Sequential(  # (N, code_dim, h/8, w/8) -> (N, 3, h, w) logits of pixels
            nn.Conv2d(code_dim, 2 * width, 1),
            ResidualBlock(2 * width),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
        )

    @property
    def can_decode(self) -> bool:
        return True

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (N, 3, h, w) in [0, 1] -> (reconstruction, ids (N, h/8, w/8), commitment loss)."""
        latent = self.encoder(pixels * 2 - 1)  # (N, code_dim, h/8, w/8)
        quantized, ids, commit_loss = self.quantizer(latent)
        return torch.sigmoid(self.decoder(quantized)), ids, commit_loss

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> (N, h/8, w/8) long."""
        self.check_pixels(pixels)
        with frozen_inference(pixels.device):
            was_training = self.training
            self.eval()  # the quantizer updates its codebook in training mode
            _, ids, _ = self.quantizer(self.encoder(pixels.float() * 2 - 1))
            self.train(was_training)
        return ids.clone()  # a normal tensor: inference tensors cannot be saved for backward as targets

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, h, w) long -> (N, 3, 8h, 8w) in [0, 1]."""
        with frozen_inference(ids.device):
            pixels = torch.sigmoid(self.decoder(self.quantizer.get_output_from_indices(ids)))
        return pixels.clone()

    def save(self, directory: str | Path, weights_name: str = "tokenizer.safetensors") -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / weights_name))
        return write_tokenizer_json(directory, "vq", self.config, {"weights": weights_name})

    @classmethod
    def from_dir(cls, directory: str | Path) -> "VQTokenizer":
        spec = read_tokenizer_json(directory)
        if spec["kind"] != "vq":
            raise CheckpointError(f"{spec['directory']} holds a {spec['kind']!r} tokenizer, not 'vq'")
        path = spec["directory"] / spec["files"]["weights"]
        if not path.is_file():
            raise CheckpointError(f"tokenizer weights {path} are missing")
        tokenizer = cls(**spec["config"])
        load_strict(tokenizer, load_weights_file(path), str(path))
        return tokenizer.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def find_images(images: str | Path | list) -> list[Path]:
    """A folder (searched recursively) or a list of paths -> sorted image paths."""
    if isinstance(images, (str, Path)):
        root = Path(images)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        paths = [Path(p) for p in images]
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {images}")
    return paths


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """Centre-cropped to a square and resized (Lanczos, like the tokenizer view) -> uint8 (N, 3, size, size)."""
    from PIL import Image

    frames = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        frames.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3))
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for pixels in [0, 1]: (N, 3, h, w) x2 -> (N,)."""
    mse = (reconstruction - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def evaluate_vq(tokenizer: VQTokenizer, images: torch.Tensor, batch_size: int = 64) -> dict:
    """Reconstruction PSNR and codebook usage on uint8 images (N, 3, h, w)."""
    device = next(tokenizer.parameters()).device
    psnrs, counts = [], torch.zeros(tokenizer.vocab_size)
    for start in range(0, len(images), batch_size):
        pixels = images[start : start + batch_size].to(device).float() / 255
        ids = tokenizer.encode(pixels)
        psnrs.append(psnr(tokenizer.decode(ids), pixels).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=tokenizer.vocab_size).float()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {
        "psnr_db": torch.cat(psnrs).mean().item(),
        "codebook_usage": (counts > 0).float().mean().item(),  # fraction of codes used at least once
        "perplexity": entropy.exp().item(),  # effective number of codes
    }


def train_vq_tokenizer(
    images: str | Path | list,
    out_dir: str | Path,
    size: int = 112,
    width: int = 64,
    codebook_size: int = 512,
    code_dim: int = 32,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_every: int = 500,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Train a VQTokenizer on a folder (or list) of images; write OUT/tokenizer.json + weights.

    Images are held in memory as uint8 at `size` (the tokenizer input: half the model input).
    Weights are saved every `checkpoint_every` steps to OUT/checkpoints/ (itself loadable with
    `load_tokenizer`: its tokenizer.json points at the latest). Returns the final metrics (also
    written to OUT/metrics.json): psnr_db, codebook_usage, perplexity, seconds, and tokenizer_dir
    (= OUT, what `load_tokenizer` reads).
    """
    if size % 8:
        raise DataError(f"tokenizer input size {size} must be a multiple of 8")
    out_dir = Path(out_dir)
    started = time.time()
    images_u8 = load_images(find_images(images), size)
    log.info("training a VQ tokenizer on %d images of %dx%d for %d steps", len(images_u8), size, size, steps)

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the quantizer's k-means init and code revival draw from the global generator
    tokenizer = VQTokenizer(width=width, codebook_size=codebook_size, code_dim=code_dim).to(device).train()
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    bar = tqdm(range(1, steps + 1), desc="vq tokenizer", disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch_ids = torch.randint(len(images_u8), (batch_size,), generator=generator)
        pixels = images_u8[batch_ids].to(device).float() / 255  # (B, 3, size, size)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        pixels[flip.to(device)] = pixels[flip.to(device)].flip(-1)
        reconstruction, _, commit_loss = tokenizer(pixels)
        loss = F.mse_loss(reconstruction, pixels) + commit_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == steps:
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr(reconstruction.detach(), pixels).mean().item():.1f}")
        if step % checkpoint_every == 0 and step < steps:
            tokenizer.save(out_dir / "checkpoints", weights_name=f"step_{step:06d}.safetensors")
    bar.close()

    tokenizer.eval()
    tokenizer.save(out_dir)
    metrics = evaluate_vq(tokenizer, images_u8[:1024].to(device))
    metrics.update(steps=steps, images=len(images_u8), seconds=round(time.time() - started, 1), tokenizer_dir=str(out_dir))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "PSNR %.2f dB, codebook usage %.1f%% (perplexity %.1f of %d codes); wrote %s",
        metrics["psnr_db"], 100 * metrics["codebook_usage"], metrics["perplexity"], codebook_size, out_dir,
    )
    return metrics


def run_train_vq(args) -> int:
    refuse_to_overwrite(args.out, force=args.force)
    metrics = train_vq_tokenizer(
        args.images,
        args.out,
        size=args.size,
        width=args.width,
        codebook_size=args.codebook_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    print(json.dumps(metrics, indent=2))
    return 0
