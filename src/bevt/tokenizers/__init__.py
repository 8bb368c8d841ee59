"""Visual tokenizers that make the pretraining targets: DALL-E's dVAE and bevt's own VQ tokenizer."""

from __future__ import annotations

from pathlib import Path

from bevt.errors import CheckpointError
from bevt.tokenizers.base import Tokenizer, read_tokenizer_json


def load_tokenizer(path_or_dir: str | Path, **options) -> Tokenizer:
    """Load a saved tokenizer (a directory with tokenizer.json, or that file) in eval mode.

    `options` go to the DALL-E tokenizer (precision="fp16", channels_last=True, compile=True).
    """
    spec = read_tokenizer_json(path_or_dir)
    if spec["kind"] == "dalle":
        from bevt.tokenizers.dalle import DalleTokenizer

        return DalleTokenizer.from_dir(spec["directory"], **options)
    if spec["kind"] == "vq":
        from bevt.tokenizers.vq import VQTokenizer

        return VQTokenizer.from_dir(spec["directory"])
    raise CheckpointError(f"{spec['directory']}: unknown tokenizer kind {spec['kind']!r} (expected 'dalle' or 'vq')")


__all__ = ["Tokenizer", "load_tokenizer"]
