"""Visual tokenizers that make the pretraining targets: DALL-E's dVAE and bevt's own VQ tokenizer."""

from __future__ import annotations

from pathlib import Path

from bevt.errors import CheckpointError, UsageError
from bevt.tokenizers.base import Tokenizer, read_tokenizer_json
from bevt.tokenizers.dalle import DalleTokenizer


def load_tokenizer(path_or_dir: str | Path, **options) -> Tokenizer:
    """Load a saved tokenizer (a directory with tokenizer.json, or that file) in eval mode.

    `options` go to the DALL-E tokenizer (precision="fp16", channels_last=True, compile=True).
    """
    spec = read_tokenizer_json(path_or_dir)
    if spec["kind"] == "dalle":
        return DalleTokenizer.from_dir(spec["directory"], **options)
    if spec["kind"] == "vq":
        return vq_tokenizer_class().from_dir(spec["directory"])
    raise CheckpointError(f"{spec['directory']}: unknown tokenizer kind {spec['kind']!r} (expected 'dalle' or 'vq')")


def vq_tokenizer_class():
    """`VQTokenizer`, whose quantizer comes from the optional vector-quantize-pytorch package."""
    try:
        from bevt.tokenizers.vq import VQTokenizer  # optional extra: bevt[vq]
    except ImportError as err:
        raise UsageError(f"bevt's VQ tokenizer needs vector-quantize-pytorch ({err}): pip install 'bevt[vq]'") from None
    return VQTokenizer


__all__ = ["Tokenizer", "load_tokenizer", "vq_tokenizer_class"]
