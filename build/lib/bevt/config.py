"""Typed run configuration: nested dataclasses, YAML recipes as diffs over their defaults.

`load_config(recipe, overrides)` reads a recipe (a path, or the name of one shipped in
`bevt/configs/`), applies `key=value` overrides (values parsed as YAML), and builds the
dataclasses. Every field carries a one-line doc; unknown keys fail with the nearest valid name and
bad values fail with the key named, all before anything heavy is built. The defaults are the
paper's Swin-B joint pretraining recipe (paper section 4.1 and the released configs), so recipes only list what differs.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from bevt.errors import ConfigError
from bevt.models import MODEL_FLAVORS

RECIPES = resources.files("bevt") / "configs"


def doc(default, text: str):
    """A dataclass field with its one-line documentation (shown in errors about the field)."""
    return field(default=default, metadata={"doc": text})


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class ModelConfig:
    name: str = doc("swin_b", "encoder flavor: debug, swin_t, swin_s, swin_b, swin_l")
    window_size: tuple[int, int, int] | None = doc(None, "attention window (t, h, w); null = the flavor's (8, 7, 7); SSv2: (16, 7, 7)")
    drop_path_rate: float = doc(0.3, "stochastic depth rate of the last block (linearly increasing)")
    use_checkpoint: bool = doc(False, "gradient checkpointing of every block (less memory, ~30% slower)")
    head_dropout: float = doc(0.5, "dropout before the classification head (finetuning)")
    image_shift_mask: Literal["standard", "official"] = doc(
        "standard", "image stream windows: standard 2D Swin, or official = the released BEVT code (shift mask in "
        "every block, stage 4 rolled by 3), which its checkpoints were trained with"
    )

    def __post_init__(self):
        _check(self.name in MODEL_FLAVORS, "name", f"unknown flavor {self.name!r}; choose one of {', '.join(MODEL_FLAVORS)}")
        _check(self.window_size is None or min(self.window_size) >= 1, "window_size", "every window side must be >= 1")
        _check(0 <= self.drop_path_rate < 1, "drop_path_rate", "must be in [0, 1)")
        _check(0 <= self.head_dropout < 1, "head_dropout", "must be in [0, 1)")
        _check(self.image_shift_mask in ("standard", "official"), "image_shift_mask", "must be 'standard' or 'official'")


@dataclass
class MaskingConfig:
    video: Literal["tube", "frame_diff", "random_frame", "random3d"] = doc(
        "tube", "video mask strategy (paper Table 8); images always use blockwise masking"
    )
    ratio: float = doc(0.5, "fraction of tokenizer cells masked per image / per masked temporal step")
    min_cells: int = doc(16, "smallest block area in cells (BEiT blockwise masking)")
    tube_length: tuple[float, float] = doc((0.5, 1.0), "range of masked temporal steps, as fractions of T'")
    wrap: bool = doc(True, "a tube that runs past the last step wraps around (released code)")

    def __post_init__(self):
        _check(0 < self.ratio < 1, "ratio", "must be in (0, 1)")
        _check(self.min_cells >= 1, "min_cells", "must be >= 1")
        low, high = self.tube_length
        _check(0 < low <= high <= 1, "tube_length", "must be (low, high) with 0 < low <= high <= 1")


@dataclass
class TokenizerConfig:
    path: str | None = doc(None, "tokenizer directory from `bevt tokenizer import-dalle` or `bevt tokenizer train`")


@dataclass
class VQConfig:
    width: int = doc(64, "VQ tokenizer: base channel width of its conv encoder / decoder")
    codebook_size: int = doc(512, "VQ tokenizer: number of codes (the pretrainer's vocabulary)")
    code_dim: int = doc(32, "VQ tokenizer: dimension of a code vector")

    def __post_init__(self):
        _check(self.width >= 1, "width", "must be >= 1")
        _check(self.codebook_size >= 2, "codebook_size", "must be >= 2")
        _check(self.code_dim >= 1, "code_dim", "must be >= 1")


@dataclass
class DataConfig:
    images: str | None = doc(None, "image stream: a folder of class folders, or a list file of image paths; "
                                   "videos there (any video annotation format) give one random frame per sample")
    train: str | None = doc(None, "training videos: list file, Kinetics CSV, SSv2 / Diving48 json, or class folders")
    val: str | None = doc(None, "evaluation videos, same formats as `train`")
    root: str | None = doc(None, "folder the video paths in `train` / `val` are relative to")
    labels: str | None = doc(None, "class names: SSv2 labels.json, or one name per line (Kinetics CSV, list files)")
    frames: int = doc(16, "frames per clip")
    interval: int = doc(8, "frame interval of interval sampling")
    sampling: Literal["interval", "segment"] = doc("interval", "clip sampling: interval, or uniform segments (SSv2)")
    size: int = doc(224, "model input side in pixels (the tokenizer sees half of it)")
    short_side: tuple[int, int] = doc((256, 320), "pretraining: short side rescaled uniformly in this range before the crop")
    crop_scale: tuple[float, float] = doc((0.08, 1.0), "finetuning: RandomResizedCrop area range (fraction of the frame)")
    flip: bool = doc(True, "random horizontal flip")
    color_jitter: float = doc(0.4, "image stream: brightness / contrast / saturation jitter strength")
    randaugment: tuple[int, int] | None = doc(None, "finetuning: RandAugment (ops, magnitude), same ops on every frame")
    randaugment_impl: Literal["official", "torchvision"] = doc(
        "official", "RandAugment flavour: official = imgaug 0.4.0's as released (flip, crop, m of 30); torchvision = m of 10")
    tokenizer_resize: Literal["official", "pil"] = doc(
        "pil", "tokenizer view resize: official = OpenCV INTER_LANCZOS4 as released; pil = PIL's antialiased Lanczos")
    random_erasing: float = doc(0.0, "finetuning: probability of random erasing (same box on every frame)")
    video_batch_size: int = doc(4, "clips per process per micro-step")
    image_batch_size: int = doc(32, "images per process per micro-step (image and joint streams)")
    workers: int = doc(8, "DataLoader worker processes per stream")
    max_skip_fraction: float = doc(0.01, "fail once this share of samples could not be read")

    def __post_init__(self):
        _check(self.frames >= 2 and self.frames % 2 == 0, "frames", "must be even and >= 2 (2 frames per patch step)")
        _check(self.interval >= 1, "interval", "must be >= 1")
        _check(self.size >= 32 and self.size % 32 == 0, "size", "must be a multiple of 32 (the stage-4 stride)")
        low, high = self.short_side
        _check(self.size <= low <= high, "short_side", f"must be (low, high) with size={self.size} <= low <= high")
        low_scale, high_scale = self.crop_scale
        _check(0 < low_scale <= high_scale <= 1, "crop_scale", "must be (low, high) with 0 < low <= high <= 1")
        if self.randaugment is not None:
            _check(self.randaugment[0] >= 1 and self.randaugment[1] >= 0, "randaugment", "must be (ops >= 1, magnitude >= 0)")
        _check(0 <= self.random_erasing <= 1, "random_erasing", "must be a probability")
        _check(self.video_batch_size >= 1, "video_batch_size", "must be >= 1")
        _check(self.image_batch_size >= 1, "image_batch_size", "must be >= 1")
        _check(self.workers >= 0, "workers", "must be >= 0")
        _check(0 <= self.max_skip_fraction <= 1, "max_skip_fraction", "must be in [0, 1]")


@dataclass
class KeyMultipliers:
    lr_mult: float = doc(1.0, "lr multiplier of the parameters this key decides")
    decay_mult: float = doc(1.0, "weight-decay multiplier of the parameters this key decides")

    def __post_init__(self):
        _check(self.lr_mult >= 0, "lr_mult", "must be >= 0")
        _check(self.decay_mult >= 0, "decay_mult", "must be >= 0")


@dataclass
class OptimConfig:
    lr: float = doc(5e-4, "peak learning rate after warm-up (absolute, not scaled with the batch)")
    min_lr: float = doc(0.0, "learning rate at the end of the cosine")
    weight_decay: float = doc(0.05, "AdamW weight decay (param_groups=clean: never on norms, biases, bias tables, mask token)")
    betas: tuple[float, float] = doc((0.9, 0.999), "AdamW betas")
    epochs: float = doc(150.0, "training length in epochs of the main stream (video; images for stage 1)")
    warmup_epochs: float = doc(10.0, "linear warm-up length in epochs")
    warmup_ratio: float = doc(0.0, "lr at the start of the warm-up as a fraction of the scheduled lr (released: 0.1, mmcv's warmup_ratio)")
    cosine_over: Literal["after_warmup", "whole_run"] = doc(
        "after_warmup", "the cosine spans the steps after warm-up, or the whole run with warm-up scaling it (released)"
    )
    lr_by_epoch: bool = doc(False, "the cosine moves once per epoch (released finetuning, mmcv by_epoch) instead of every step")
    param_groups: Literal["clean", "official"] = doc(
        "clean", "clean: layer_decay / backbone_lr_scale, no decay on 1-D params and tokens; official: custom_keys as released"
    )
    custom_keys: dict[str, KeyMultipliers] = field(default_factory=dict, metadata={"doc": (
        "param_groups=official: mmcv's paramwise custom_keys; the longest key found in a parameter's released name "
        "decides its lr / decay multipliers")})
    layer_decay: float = doc(1.0, "param_groups=clean: layer-wise lr decay per block towards the input (finetuning: 0.9)")
    backbone_lr_scale: float = doc(1.0, "param_groups=clean: lr multiplier of the encoder relative to the head (SSv2: 0.1)")
    clip_grad: float | None = doc(3.0, "max global gradient norm; null = no clipping")
    accum_steps: int = doc(1, "micro-steps accumulated per optimizer step")
    ema: bool = doc(False, "keep an exponential moving average of the weights (saved as ema.safetensors)")
    ema_decay: float = doc(0.9999, "EMA retention per optimizer step (released SSv2: 0.9998 per iteration ** 8 iterations)")

    def __post_init__(self):
        _check(self.lr > 0, "lr", "must be > 0")
        _check(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        _check(self.epochs > 0, "epochs", "must be > 0")
        _check(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", "must be in [0, epochs]")
        _check(0 <= self.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]")
        _check(self.param_groups != "official" or bool(self.custom_keys), "param_groups",
               "official needs optim.custom_keys (the swin_b_* recipes list the released ones)")
        _check(0 < self.layer_decay <= 1, "layer_decay", "must be in (0, 1]")
        _check(self.backbone_lr_scale > 0, "backbone_lr_scale", "must be > 0")
        _check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be > 0 or null")
        _check(self.accum_steps >= 1, "accum_steps", "must be >= 1")
        _check(0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)")


@dataclass
class PretrainConfig:
    streams: Literal["image", "video", "joint"] = doc("joint", "image = stage 1 (BEVT-I), joint = stage 2 (BEVT), video = BEVT-V")
    video_loss_weight: float = doc(1.0, "lambda in L = L_MIM + lambda * L_MVM")

    def __post_init__(self):
        _check(self.video_loss_weight >= 0, "video_loss_weight", "must be >= 0")


@dataclass
class FinetuneConfig:
    num_classes: int | None = doc(None, "classes of the finetuning task; null = counted from data.labels or the class folders")
    label_smoothing: float = doc(0.0, "label smoothing of the cross-entropy (SSv2: 0.1)")
    mixup: float = doc(0.0, "mixup alpha; 0 = off")
    cutmix: float = doc(0.0, "cutmix alpha; 0 = off")
    bias_table_align_corners: bool = doc(
        False, "bias tables of another temporal window are resized trilinearly with align_corners (released SSv2: false)"
    )

    def __post_init__(self):
        _check(self.num_classes is None or self.num_classes >= 2, "num_classes", "must be >= 2")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        _check(self.mixup >= 0 and self.cutmix >= 0, "mixup", "alphas must be >= 0")


@dataclass
class EvalConfig:
    clips: int = doc(4, "clips per video at test time (softmax averaged over clips x crops)")
    crops: Literal[1, 3] = doc(3, "spatial crops per clip: 1 (centre) or 3 (left/centre/right)")
    batch_size: int = doc(2, "videos per process per evaluation batch (each with clips x crops views)")

    def __post_init__(self):
        _check(self.clips >= 1, "clips", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class RunConfig:
    out: str = doc("runs/default", "run directory: checkpoints, metrics.jsonl, TensorBoard (default runs/<recipe>)")
    seed: int = doc(0, "base seed; rank r uses seed + r")
    device: Literal["auto", "cpu", "cuda"] = doc("auto", "auto = cuda when available")
    precision: Literal["bf16", "fp16", "fp32"] = doc("bf16", "autocast dtype; fp16 adds a grad scaler (GPU only)")
    parallel: Literal["ddp", "fsdp"] = doc("ddp", "multi-process strategy under torchrun")
    init_from: str | None = doc(None, "checkpoint to start from: stage 1 for stage 2 (inflated 2D -> 3D), a pretraining run for finetuning")
    checkpoint_every: int = doc(1000, "optimizer steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = doc(2, "complete checkpoints kept; older ones are deleted")
    log_every: int = doc(10, "optimizer steps between metric lines")
    compile: bool = doc(False, "torch.compile every Swin block (regional; compiles once per block shape at the start)")

    def __post_init__(self):
        _check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        _check(self.log_every >= 1, "log_every", "must be >= 1")


@dataclass
class Config:
    task: Literal["pretrain", "finetune", "tokenizer"] = doc(
        "pretrain", "which verb runs this recipe: bevt pretrain, bevt finetune, bevt tokenizer train")
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        """Checks across sections: which inputs the task needs."""
        for key in self.required_paths():
            section, name = key.split(".")
            _check(getattr(getattr(self, section), name) is not None, key, f"is required for {self.describe()}")
        if self.task == "finetune":
            mixing = self.finetune.mixup > 0 or self.finetune.cutmix > 0
            _check(not mixing or self.data.video_batch_size % 2 == 0, "data.video_batch_size",
                   "must be even with mixup / cutmix (clips are mixed in pairs)")

    def describe(self) -> str:
        if self.task == "pretrain":
            return f"pretraining with streams={self.pretrain.streams}"
        return "finetuning" if self.task == "finetune" else "tokenizer training"

    def required_paths(self) -> list[str]:
        """Config keys of the inputs this task reads."""
        if self.task == "finetune":
            return ["data.train"]
        if self.task == "tokenizer":
            return ["data.images"]
        keys = ["tokenizer.path"]
        if self.pretrain.streams in ("image", "joint"):
            keys.append("data.images")
        if self.pretrain.streams in ("video", "joint"):
            keys.append("data.train")
        return keys


# ----------------------------------------------------------------------------------------------
# Building the dataclasses from plain dicts, with the key named in every error.
# ----------------------------------------------------------------------------------------------


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, annotation, key: str):
    """`value` as the annotated type (YAML gives lists for tuples, ints for floats, '1e-4' as str)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(map(str, args))}{_suggest(value, args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        key_type, value_type = args
        if dataclasses.is_dataclass(value_type):
            return {_coerce(k, key_type, key): _build(value_type, v, f"{key}.{k}.") for k, v in value.items()}
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise ConfigError(f"{key}={value!r}: expected {annotation.__name__}")


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown key {key!r}{_suggest(key, [prefix + f for f in fields])}")
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if not prefix:
            raise
        name, message = str(err).split(":", 1)
        value = kwargs.get(name, fields[name].default)
        raise ConfigError(f"{prefix}{name}={value!r}:{message} ({fields[name].metadata['doc']})") from None


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from nested plain values (a recipe with overrides applied)."""
    return _build(Config, raw, "")


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) that YAML and `config_from_dict` round-trip."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def documented_yaml(cfg: Config) -> str:
    """The config as YAML with every key's one-line doc as a comment (`bevt config show`); it
    reads back as the same config."""
    plain = config_to_dict(cfg)
    lines = []

    def add(obj, values: dict, indent: str) -> None:
        for f in dataclasses.fields(obj):
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                lines.append(f"{indent}{f.name}:")
                add(getattr(obj, f.name), values[f.name], indent + "  ")
            else:
                value = yaml.safe_dump(values[f.name], default_flow_style=True, width=1000).removesuffix("...\n")
                lines.append(f"{indent}{f.name}: {value.strip()}  # {f.metadata['doc']}")

    add(cfg, plain, "")
    return "\n".join(lines) + "\n"


def recipe_names() -> list[str]:
    """Names of the recipes shipped in bevt/configs/."""
    return sorted(p.name.removesuffix(".yaml") for p in RECIPES.iterdir() if p.name.endswith(".yaml"))


def read_recipe(path_or_name: str | Path) -> dict:
    """A recipe file as a dict: a path, or the name of a shipped recipe ("tiny_joint")."""
    path = Path(path_or_name)
    if not path.is_file():
        shipped = RECIPES / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"no config file {str(path_or_name)!r} and no shipped recipe of that name"
                f"{_suggest(path_or_name, recipe_names())}; shipped: {', '.join(recipe_names())}"
            )
        path = shipped
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a YAML recipe: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections")
    return raw


def apply_override(raw: dict, override: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML) to a nested dict, in place."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    *sections, name = key.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {section!r} is not a section")
    node[name] = value


def load_config(path_or_name: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Recipe (path or shipped name) + `key=value` overrides -> validated Config."""
    raw = read_recipe(path_or_name)
    if isinstance(raw.setdefault("run", {}), dict):
        raw["run"].setdefault("out", f"runs/{Path(path_or_name).stem}")
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
