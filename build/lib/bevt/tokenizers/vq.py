"""bevt's own trainable VQ tokenizer: for users without DALL-E weights and for CPU runs.

A small conv autoencoder with 8x downsampling (so it sees the half-size view like the dVAE and
gives the same H/16 x W/16 target grid) around vector-quantize-pytorch's `VectorQuantize`: codebook
learned by EMA, initialised by k-means on the first batch, and codes that fall out of use
(EMA count below `dead_code_threshold`) revived from the current batch.
It trains as a task of the one training loop (`bevt tokenizer train`, recipe `tokenizer_vq`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from bevt.checkpoint import load_strict, load_weights_file
from bevt.errors import CheckpointError
from bevt.tokenizers.base import Tokenizer, frozen_inference, read_tokenizer_json, write_tokenizer_json


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


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for pixels in [0, 1]: (N, 3, h, w) x2 -> (N,)."""
    mse = (reconstruction - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)
