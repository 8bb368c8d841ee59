"""Config -> module, and run directory -> module: what training, evaluation and the demo build.

`build_model(cfg)` is the module a run trains: the classifier (finetune), the pretrainer with its
frozen tokenizer (pretrain), or a VQ tokenizer (tokenizer). `load_model_from_checkpoint(path)` rebuilds it from a finished checkpoint with the
config saved beside the weights, for evaluate / predict / visualize.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bevt.checkpoint import EMA_FILE, MODEL_FILE, load_strict, read_config, read_weights, resolve_checkpoint
from bevt.config import Config
from bevt.errors import ConfigError
from bevt.models import VideoClassifier, create_model
from bevt.models.pretrainer import BEVTPretrainer
from bevt.tokenizers import load_tokenizer, vq_tokenizer_class


def encoder_kwargs(cfg: Config) -> dict:
    kwargs = {"drop_path_rate": cfg.model.drop_path_rate, "use_checkpoint": cfg.model.use_checkpoint,
              "image_shift_mask": cfg.model.image_shift_mask}
    if cfg.model.window_size is not None:
        kwargs["window_size"] = cfg.model.window_size
    return kwargs


def build_model(cfg: Config, tokenizer=None) -> nn.Module:
    """The trained module of a config: the classifier (finetune), the pretrainer with its frozen
    tokenizer (read from `tokenizer.path` unless one is passed), or a VQ tokenizer to train.

    Encoder parts the task never runs are frozen, so AdamW and DDP skip them: the image stream's
    patch embedding and the mask token in finetuning, the other stream's embedding in BEVT-I / -V.
    """
    if cfg.task == "tokenizer":
        VQTokenizer = vq_tokenizer_class()
        return VQTokenizer(width=cfg.vq.width, codebook_size=cfg.vq.codebook_size, code_dim=cfg.vq.code_dim)
    if cfg.task == "finetune" and cfg.finetune.num_classes is None:
        raise ConfigError("finetune.num_classes: not given, and not counted from data.train (is it there?); set it")
    encoder = create_model(cfg.model.name, **encoder_kwargs(cfg))
    if cfg.task == "finetune":
        encoder.patch_embed_2d.requires_grad_(False)
        encoder.mask_token.requires_grad_(False)
        return VideoClassifier(encoder, cfg.finetune.num_classes, dropout=cfg.model.head_dropout)
    if cfg.pretrain.streams == "image":
        encoder.patch_embed.requires_grad_(False)
    elif cfg.pretrain.streams == "video":
        encoder.patch_embed_2d.requires_grad_(False)
    return BEVTPretrainer(
        encoder,
        tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer.path),
        streams=cfg.pretrain.streams,
        video_loss_weight=cfg.pretrain.video_loss_weight,
    )


def window_of(encoder: nn.Module) -> tuple[int, int, int]:
    return encoder.layers[0].window_size


def load_model_from_checkpoint(path: str | Path, use_ema: bool | None = None) -> tuple[nn.Module, Config]:
    """-> (model in eval mode, config) of a checkpoint or run directory. `use_ema=None` takes the
    EMA weights when the checkpoint has them."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    if use_ema is None:
        use_ema = (path / EMA_FILE).is_file()
    model = build_model(config)
    load_strict(model, read_weights(path, ema=use_ema), f"{path}/{EMA_FILE if use_ema else MODEL_FILE}")
    return model.eval(), config
