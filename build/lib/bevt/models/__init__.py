"""Models: the Video Swin encoder (both streams), its named flavors, and the classifier."""

from __future__ import annotations

import difflib

from bevt.errors import ConfigError
from bevt.models.heads import VideoClassifier
from bevt.models.video_swin import VideoSwinEncoder

# Encoder kwargs per flavor; window (8,7,7) is the encoder default (16,7,7 for SSv2 via overrides).
MODEL_FLAVORS = {
    # tiny, for tests and CI: 8x64x64 or 4x32x32 inputs run in milliseconds on CPU
    "debug": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(2, 4, 4)),
    "swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def create_model(name, num_classes=None, **overrides):
    """Encoder of flavor `name`, or a `VideoClassifier` around it when `num_classes` is given.

    `overrides` are `VideoSwinEncoder` kwargs (window_size, drop_path_rate, use_checkpoint, ...)
    plus `head_dropout` for the classifier.
    """
    if name not in MODEL_FLAVORS:
        close = difflib.get_close_matches(name, MODEL_FLAVORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; choose from {', '.join(MODEL_FLAVORS)}")
    head_dropout = overrides.pop("head_dropout", 0.5)
    if "window_size" in overrides:
        overrides["window_size"] = tuple(overrides["window_size"])
    encoder = VideoSwinEncoder(**{**MODEL_FLAVORS[name], **overrides})
    if num_classes is None:
        return encoder
    return VideoClassifier(encoder, num_classes, dropout=head_dropout)


def parse_window(text):
    """'8,7,7' -> (8, 7, 7), for command-line options."""
    try:
        window = tuple(int(n) for n in text.split(","))
    except ValueError:
        window = ()
    if len(window) != 3 or min(window) < 1:
        raise ConfigError(f"a window is three positive integers t,h,w, got {text!r}")
    return window


__all__ = ["MODEL_FLAVORS", "VideoClassifier", "VideoSwinEncoder", "create_model", "parse_window"]
