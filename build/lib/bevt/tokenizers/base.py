"""The small interface every visual tokenizer implements, and the tokenizer.json it is saved with.

A tokenizer turns the half-size view of the model input into one discrete token per 8x8 pixels,
so a 224 model input (112 for the tokenizer) gives the 14x14 target grid of the pretrainer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from bevt.errors import CheckpointError, UsageError

TOKENIZER_JSON = "tokenizer.json"


class Tokenizer(nn.Module):
    """Pixels in [0, 1] -> token ids, and back where a decoder exists.

    Subclasses set `vocab_size` and implement `encode` (and `decode`); each applies its own pixel
    preprocessing inside, so callers always pass plain [0, 1] pixels.
    """

    vocab_size: int
    downsample: int = 8  # pixels per token side

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) float in [0, 1] -> (N, h/8, w/8) long."""
        raise NotImplementedError

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, h/8, w/8) long -> (N, 3, h, w) float in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} was loaded without a decoder")

    @property
    def can_decode(self) -> bool:
        return False

    def check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels (N, 3, h, w), got {tuple(pixels.shape)}")
        if pixels.shape[-1] % self.downsample or pixels.shape[-2] % self.downsample:
            raise ValueError(f"pixel size {tuple(pixels.shape[-2:])} is not a multiple of {self.downsample}")


@contextlib.contextmanager
def frozen_inference(device: torch.device):
    """No autograd, and no caller's autocast: a tokenizer computes in the precision it chose."""
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        yield


def write_tokenizer_json(directory: str | Path, kind: str, config: dict, files: dict[str, str]) -> Path:
    """Write DIR/tokenizer.json: which class (`kind`), its constructor kwargs and its weight files."""
    path = Path(directory) / TOKENIZER_JSON
    path.write_text(json.dumps({"kind": kind, "config": config, "files": files}, indent=2) + "\n")
    return path


def read_tokenizer_json(directory: str | Path) -> dict:
    """-> {"kind", "config", "files"} of a saved tokenizer, with clear errors for a wrong path."""
    path = Path(directory)
    if path.name == TOKENIZER_JSON:
        path = path.parent
    spec_path = path / TOKENIZER_JSON
    if not spec_path.is_file():
        raise CheckpointError(
            f"{path} is not a tokenizer directory (no {TOKENIZER_JSON}); create one with "
            "`bevt tokenizer import-dalle` or `bevt tokenizer train`"
        )
    try:
        spec = json.loads(spec_path.read_text())
        spec["kind"], spec["config"], spec["files"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{spec_path} is malformed: {type(err).__name__}: {err}") from None
    spec["directory"] = path
    return spec


def tokenizer_fingerprint(directory: str | Path) -> str:
    """A hash of tokenizer.json and the weight files it names: the identity of the targets a
    pretraining run learns. Checkpoints store it and resume checks it, because a tokenizer
    retrained into the same folder would otherwise change the targets silently."""
    spec = read_tokenizer_json(directory)
    digest = hashlib.sha256((spec["directory"] / TOKENIZER_JSON).read_bytes())
    for name in sorted(spec["files"].values()):
        try:
            with open(spec["directory"] / name, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as err:
            raise CheckpointError(f"tokenizer weights {spec['directory'] / name}: {err.strerror}") from None
    return digest.hexdigest()[:16]


def refuse_to_overwrite(directory: str | Path, force: bool = False) -> None:
    """Raise unless `directory` is free for a new tokenizer (or `force`): replacing one would
    silently change the targets of every run that points at it."""
    spec_path = Path(directory) / TOKENIZER_JSON
    if spec_path.exists() and not force:
        raise UsageError(f"--out {directory} already holds a tokenizer ({spec_path}); runs that point at it would "
                         "silently get other targets: choose another --out, or pass --force to replace it")
