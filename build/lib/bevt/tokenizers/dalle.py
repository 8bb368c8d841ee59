"""DALL-E's discrete VAE as a bevt tokenizer: encoder (targets) and decoder (pictures).

Architecture from the DALL-E paper (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation") and
its released dVAE: the encoder is a 7x7 input conv, four groups of residual blocks whose width
doubles per group (hidden, 2x, 4x, 8x) with 2x2 max-pooling between groups, then ReLU and a 1x1
conv to 8192 logits; a token is the argmax. A residual block adds `post_gain * path(x)` to its
input (a 1x1 conv when the width changes), where the path is four ReLU+conv steps through a
quarter of the output width and `post_gain = 1 / (number of blocks)^2`. The decoder mirrors it:
a 1x1 conv from the one-hot codes, groups of shrinking width with nearest 2x upsampling between
them, and a 1x1 conv to 6 channels (the logit-Laplace mean and scale of each colour); the picture
is sigmoid(mean) mapped back from [0.1, 0.9] to [0, 1].

The official weights are pickled modules that need the `dall_e` package to unpickle;
`import_dalle` (CLI `bevt tokenizer import-dalle --trust-pickle`) converts them once into
safetensors with our parameter names, and `DalleTokenizer` only ever reads safetensors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bevt.checkpoint import load_strict, load_weights_file
from bevt.errors import CheckpointError, DataError, UsageError
from bevt.tokenizers.base import Tokenizer, frozen_inference, read_tokenizer_json, write_tokenizer_json

LOGIT_LAPLACE_EPS = 0.1  # pixels are squeezed into [eps, 1 - eps] before the encoder
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# precision="auto": the fastest mode whose tokens agree with fp32 on >= 99.5% of cells, per device
# (README, benchmarks/tokenizer.py: fp16 99.70% at 1.5x fp32 on an H100; bf16 only 97%, so fp32 on CPU).
AUTO_PRECISION = {"cuda": "fp16"}
NUM_GROUPS = 4  # three 2x poolings: one token per 8x8 pixels


def map_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [0.1, 0.9], the range the dVAE was trained on."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * pixels + LOGIT_LAPLACE_EPS


def unmap_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)).clamp(0, 1)


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """Same-padded conv with the dVAE's init: weights N(0, 1/fan_in), zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.normal_(conv.weight, std=1 / math.sqrt(in_channels * kernel_size**2))
    nn.init.zeros_(conv.bias)
    return conv


class DVAEResidualBlock(nn.Module):
    """x -> shortcut(x) + post_gain * conv(relu(conv(relu(conv(relu(conv(relu(x)))))))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...], post_gain: float):
        super().__init__()
        hidden = out_channels // 4
        widths = [in_channels, hidden, hidden, hidden, out_channels]
        self.shortcut = _conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.convs = nn.ModuleList(_conv(widths[i], widths[i + 1], k) for i, k in enumerate(kernel_sizes))
        self.post_gain = post_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = x
        for conv in self.convs:
            path = conv(F.relu(path))
        return self.shortcut(x) + self.post_gain * path


def _groups(widths: list[int], in_channels: int, blocks_per_group: int, kernel_sizes: tuple[int, ...]) -> nn.ModuleList:
    post_gain = 1 / (len(widths) * blocks_per_group) ** 2
    groups = []
    for width in widths:
        blocks = []
        for _ in range(blocks_per_group):
            blocks.append(DVAEResidualBlock(in_channels, width, kernel_sizes, post_gain))
            in_channels = width
        groups.append(nn.Sequential(*blocks))
    return nn.ModuleList(groups)


class DalleEncoder(nn.Module):
    """Mapped pixels (N, 3, h, w) -> token logits (N, vocab_size, h/8, w/8)."""

    def __init__(self, hidden: int = 256, blocks_per_group: int = 2, vocab_size: int = 8192):
        super().__init__()
        self.config = {"hidden": hidden, "blocks_per_group": blocks_per_group, "vocab_size": vocab_size}
        widths = [hidden * 2**g for g in range(NUM_GROUPS)]  # 1x, 2x, 4x, 8x hidden
        self.stem = _conv(3, hidden, 7)
        self.groups = _groups(widths, hidden, blocks_per_group, kernel_sizes=(3, 3, 3, 1))
        self.head = _conv(widths[-1], vocab_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index, group in enumerate(self.groups):
            x = group(x)
            if index < len(self.groups) - 1:
                x = F.max_pool2d(x, 2)
        return self.head(F.relu(x))


class DalleDecoder(nn.Module):
    """Token ids (N, h, w) -> logit-Laplace parameters (N, 6, 8h, 8w)."""

    def __init__(self, hidden: int = 256, init_channels: int = 128, blocks_per_group: int = 2, vocab_size: int = 8192):
        super().__init__()
        self.config = {
            "hidden": hidden,
            "init_channels": init_channels,
            "blocks_per_group": blocks_per_group,
            "vocab_size": vocab_size,
        }
        widths = [hidden * 2**g for g in reversed(range(NUM_GROUPS))]  # 8x, 4x, 2x, 1x hidden
        self.stem = _conv(vocab_size, init_channels, 1)
        self.groups = _groups(widths, init_channels, blocks_per_group, kernel_sizes=(1, 3, 3, 3))
        self.head = _conv(widths[-1], 6, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # A 1x1 conv of a one-hot map is a lookup of the weight column of each code.
        table = self.stem.weight[:, :, 0, 0].t()  # (vocab, init_channels)
        x = (F.embedding(ids, table) + self.stem.bias).permute(0, 3, 1, 2)  # (N, init_channels, h, w)
        for index, group in enumerate(self.groups):
            x = group(x)
            if index < len(self.groups) - 1:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.head(F.relu(x))


class DalleTokenizer(Tokenizer):
    """The DALL-E dVAE behind the `Tokenizer` interface, run without autograd.

    `precision` ("auto", "fp32", "bf16", "fp16") sets the dtype the encoder computes in ("auto":
    AUTO_PRECISION of the input's device, else fp32, chosen at each encode); `channels_last`
    switches the convs to NHWC, which is faster on GPUs and on CPUs with oneDNN; `compile` runs the
    encoder through torch.compile (fuses the many ReLU / residual steps; about 1.6x on an H100, at
    ~15 s of compilation). The benchmark in benchmarks/tokenizer.py reports the speed and the token
    agreement of each mode.
    """

    def __init__(
        self,
        encoder: DalleEncoder,
        decoder: DalleDecoder | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        compile: bool = False,
    ):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False) if decoder is not None else None
        self.vocab_size = encoder.config["vocab_size"]
        self.channels_last = channels_last
        self.set_precision(precision)
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        if compile:
            self.encoder.compile()  # in place: parameter names and state_dict stay the same

    def set_precision(self, precision: str) -> None:
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} must be auto or one of {', '.join(PRECISIONS)}")
        self.precision = precision
        if precision != "auto":
            self.encoder.to(PRECISIONS[precision])

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype `encode` runs in on `device`."""
        precision = AUTO_PRECISION.get(device.type, "fp32") if self.precision == "auto" else self.precision
        return PRECISIONS[precision]

    @property
    def can_decode(self) -> bool:
        return self.decoder is not None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> (N, h/8, w/8) long."""
        self.check_pixels(pixels)
        dtype = self.compute_dtype(pixels.device)
        if self.encoder.head.weight.dtype != dtype:  # "auto" on a new kind of device: once
            self.encoder.to(dtype)
        with frozen_inference(pixels.device):
            x = map_pixels(pixels.to(dtype))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ids = self.encoder(x).argmax(dim=1)
        return ids.clone()  # a normal tensor: inference tensors cannot be saved for backward as targets

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, h, w) long -> (N, 3, 8h, 8w) in [0, 1]."""
        if self.decoder is None:
            return super().decode(ids)
        with frozen_inference(ids.device):
            mean = self.decoder(ids)[:, :3].float()
            pixels = unmap_pixels(torch.sigmoid(mean))
        return pixels.clone()

    def save(self, directory: str | Path) -> Path:
        """Write DIR/encoder.safetensors (+ decoder.safetensors) and DIR/tokenizer.json (fp32)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parts = {"encoder": self.encoder, "decoder": self.decoder}
        files, config = {}, {}
        for name, module in parts.items():
            if module is None:
                continue
            state = {k: v.float().contiguous() for k, v in module.state_dict().items()}
            files[name] = f"{name}.safetensors"
            config[name] = module.config
            save_file(state, str(directory / files[name]))
        return write_tokenizer_json(directory, "dalle", config, files)

    @classmethod
    def from_dir(cls, directory: str | Path, precision: str = "auto", channels_last: bool = True,
                 compile: bool = False) -> "DalleTokenizer":
        spec = read_tokenizer_json(directory)
        if spec["kind"] != "dalle":
            raise CheckpointError(f"{spec['directory']} holds a {spec['kind']!r} tokenizer, not 'dalle'")
        encoder = _load_module(DalleEncoder, spec, "encoder")
        decoder = _load_module(DalleDecoder, spec, "decoder") if "decoder" in spec["files"] else None
        return cls(encoder, decoder, precision=precision, channels_last=channels_last, compile=compile)


def _load_module(module_class, spec: dict, part: str) -> nn.Module:
    path = spec["directory"] / spec["files"][part]
    if not path.is_file():
        raise CheckpointError(f"tokenizer weights {path} are missing")
    module = module_class(**spec["config"][part])
    load_strict(module, load_weights_file(path), str(path))
    return module


# ----------------------------------------------------------------------------------------------
# Converting the official pickles (key names of the `dall_e` package) into ours.
# ----------------------------------------------------------------------------------------------

_OFFICIAL_KEY_RULES = [
    (re.compile(r"blocks\.input\.(w|b)"), "stem.{0}"),
    (re.compile(r"blocks\.output\.conv\.(w|b)"), "head.{0}"),
    (re.compile(r"blocks\.group_(\d+)\.block_(\d+)\.id_path\.(w|b)"), "groups.{0}.{1}.shortcut.{2}"),
    (re.compile(r"blocks\.group_(\d+)\.block_(\d+)\.res_path\.conv_(\d+)\.(w|b)"), "groups.{0}.{1}.convs.{2}.{3}"),
]
_PARAM_NAMES = {"w": "weight", "b": "bias"}


def convert_official_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`dall_e` package keys (`blocks.group_1.block_2.res_path.conv_3.w`) -> ours (`groups.0.1.convs.2.weight`)."""
    converted = {}
    for key, value in official.items():
        for pattern, template in _OFFICIAL_KEY_RULES:
            match = pattern.fullmatch(key)
            if match:
                # group/block/conv numbers are 1-based there, 0-based ModuleList indices here
                parts = [_PARAM_NAMES[p] if p in _PARAM_NAMES else str(int(p) - 1) for p in match.groups()]
                converted[template.format(*parts)] = value.detach().float().contiguous()
                break
        else:
            raise CheckpointError(f"unexpected key {key!r} in the DALL-E weights")
    return converted


def _config_from_converted(state: dict[str, torch.Tensor], part: str) -> dict:
    """Recover the constructor arguments from the tensor shapes of converted weights."""
    blocks_per_group = len({k.split(".")[2] for k in state if k.startswith("groups.0.")})
    if part == "encoder":
        return {
            "hidden": state["stem.weight"].shape[0],
            "blocks_per_group": blocks_per_group,
            "vocab_size": state["head.weight"].shape[0],
        }
    return {
        "hidden": state["head.weight"].shape[1],
        "init_channels": state["stem.weight"].shape[0],
        "blocks_per_group": blocks_per_group,
        "vocab_size": state["stem.weight"].shape[1],
    }


def _unpickle_official(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        import dall_e  # noqa: F401  (the pickles reference its classes)
    except ImportError as err:
        raise UsageError("unpickling the official files needs the `dall_e` package: pip install DALL-E==0.1") from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # garbage, a truncated download, or a pickle of something else entirely
        raise CheckpointError(f"{path}: cannot unpickle it ({type(err).__name__}: {str(err).splitlines()[0]}); "
                              "expected encoder.pkl / decoder.pkl of the official DALL-E release") from None
    state = loaded.state_dict() if isinstance(loaded, nn.Module) else loaded
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not the DALL-E encoder or decoder")
    return state


def import_dalle(encoder_pkl: str | Path, decoder_pkl: str | Path | None, out_dir: str | Path, *, trust_pickle: bool) -> Path:
    """Convert the official encoder.pkl (+ decoder.pkl) into a safetensors tokenizer directory.

    Unpickling executes code from the file, hence the explicit `trust_pickle`.
    """
    if not trust_pickle:
        raise UsageError(
            "the official DALL-E files are pickled Python objects and unpickling them can run arbitrary "
            "code; pass --trust-pickle if you downloaded them from the official source "
            "(this conversion is needed only once, the result is plain safetensors)"
        )
    parts = {"encoder": (DalleEncoder, Path(encoder_pkl))}
    if decoder_pkl is not None:
        parts["decoder"] = (DalleDecoder, Path(decoder_pkl))
    modules = {}
    for part, (module_class, path) in parts.items():
        state = convert_official_state_dict(_unpickle_official(path))
        modules[part] = module_class(**_config_from_converted(state, part))
        load_strict(modules[part], state, str(path))
    tokenizer = DalleTokenizer(modules["encoder"], modules.get("decoder"), channels_last=False)
    return tokenizer.save(out_dir)


def run_import_dalle(args) -> int:
    spec_path = import_dalle(args.encoder, args.decoder, args.out, trust_pickle=args.trust_pickle)
    spec = json.loads(spec_path.read_text())
    print(f"wrote {', '.join(spec['files'].values())} and {spec_path.name} to {spec_path.parent}")
    return 0
