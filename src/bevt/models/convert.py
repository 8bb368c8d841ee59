"""Checkpoints from torchvision, the official Video Swin / BEVT code and 2D Swin, in bevt's keys.

Every converter returns the state dict of `create_model(name, num_classes=N)`: keys `encoder.*`
and, when the checkpoint has a classification head, `head.*`; `from_official(...,
pretraining=True)` returns a whole `BEVTPretrainer` instead (encoder, both decoders, token head).
Checkpoints are read with `torch.load(weights_only=True)` (never unpickling arbitrary objects) or
from safetensors.

Released BEVT layout (xyzforever/BEVT, `SwinTransformerBEVT` under an mmaction recogniser), as
`from_official` maps it:
    backbone.<encoder keys>          -> encoder.<same>   (`backbone.norm` is the shared final norm)
    backbone.fpn.0 / lm_down          -> image_decoder.upsample / fuse
    backbone.fpn_s.0 / lm_down_st.0   -> video_decoder.upsample / fuse
    backbone.fpn_t.0                  -> video_decoder.temporal_upsample
    cls_head.lm_head                  -> token_head
    cls_head.vae_encoder.*            dropped (bevt reads the tokenizer from `tokenizer.path`)
The released fuse layers read [stage 3 (4C), upsampled stage 4 (8C)], bevt's [upsampled, stage 3]:
their weight columns are swapped. mmcv's EMAHook stores an EMA copy of every parameter `p.q` as
the buffer `ema_p_q`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from bevt.checkpoint import check_keys, explain_load_error, preview_keys
from bevt.errors import CheckpointError
from bevt.models import MODEL_FLAVORS, create_model, parse_window
from bevt.models.pretrainer import BEVTPretrainer
from bevt.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_WINDOW = (8, 7, 7)
# Official prefixes from DDP, mmaction recognisers and pretraining wrappers.
_PREFIXES = ("module.", "backbone.", "encoder.")
# Buffers the model rebuilds itself.
_BUFFERS = ("relative_position_index", "attn_mask")
# BEVT pretraining parts (decoders, token head, frozen dVAE) that are not part of the encoder.
_PRETRAINING_ONLY = ("lm_down.", "lm_down_st.", "fpn.", "fpn_s.", "fpn_t.", "cls_head.lm_head.", "cls_head.vae_encoder.")
# bevt module prefix -> the released model's (mmaction2 recogniser: `backbone`, `cls_head`). The
# encoder's own names (patch_embed, patch_embed_2d, mask_token, layers.i.blocks.j, layers.i.downsample,
# norm) are the released ones; the decoders and heads sit elsewhere there.
RELEASED_PREFIXES = (
    ("encoder.", "backbone."),
    ("image_decoder.upsample.", "backbone.fpn.0."),
    ("image_decoder.fuse.", "backbone.lm_down."),
    ("video_decoder.upsample.", "backbone.fpn_s.0."),
    ("video_decoder.fuse.", "backbone.lm_down_st.0."),
    ("video_decoder.temporal_upsample.", "backbone.fpn_t.0."),
    ("token_head.", "cls_head.lm_head."),
    ("head.", "cls_head.fc_cls."),
)
# Released pretraining module (`backbone.` stripped) -> BEVTPretrainer module.
_PRETRAINING_MODULES = {
    theirs.removeprefix("backbone."): ours for ours, theirs in RELEASED_PREFIXES
    if ours.startswith(("image_decoder.", "video_decoder.", "token_head."))
}
_DVAE = "cls_head.vae_encoder."
_TABLE = "relative_position_bias_table"


def released_name(name: str) -> str:
    """The name a bevt parameter has in the released model (names without a counterpart are kept)."""
    for ours, theirs in RELEASED_PREFIXES:
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    return name


# ----------------------------------------------------------------------------------------------
# Reading and checking
# ----------------------------------------------------------------------------------------------


def load_checkpoint_file(path):
    """Tensors of a .safetensors / .pth / .pt file, unwrapped from {"state_dict"|"model"|"module": ...}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, or pickles objects beyond plain tensors
        raise CheckpointError(f"cannot read {path}: {explain_load_error(err)}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def encoder_config(state_dict):
    """Encoder kwargs (embed_dim, depths, num_heads, window_size) read off a converted state dict,
    and the flavor they match (None for a custom shape). The spatial window is the flavor's
    (7x7 for custom shapes); the temporal one follows from the bias-table size."""
    try:
        embed_dim = state_dict["encoder.patch_embed.proj.weight"].shape[0]
    except KeyError:
        raise CheckpointError("no encoder.patch_embed.proj.weight: not a Video Swin checkpoint") from None
    tables = {}  # stage -> block -> table
    for key, value in state_dict.items():
        if match := re.fullmatch(rf"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attn\.{_TABLE}", key):
            tables.setdefault(int(match[1]), {})[int(match[2])] = value
    if not tables:
        raise CheckpointError("no relative_position_bias_table keys: not a Video Swin checkpoint")
    depths = tuple(len(tables[i]) for i in range(len(tables)))
    num_heads = tuple(tables[i][0].shape[1] for i in range(len(tables)))
    flavor = next((name for name, kw in MODEL_FLAVORS.items()
                   if (kw["embed_dim"], tuple(kw["depths"]), tuple(kw["num_heads"])) == (embed_dim, depths, num_heads)),
                  None)
    h, w = MODEL_FLAVORS[flavor].get("window_size", DEFAULT_WINDOW)[1:] if flavor else DEFAULT_WINDOW[1:]
    temporal_offsets = tables[0][0].shape[0] // ((2 * h - 1) * (2 * w - 1))
    window = ((temporal_offsets + 1) // 2, h, w)
    return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window), flavor


def check_converted(state_dict):
    """Raise `CheckpointError` unless `state_dict` loads into the model its shapes describe: a
    classifier, an encoder, or (with a `token_head`) a joint `BEVTPretrainer`."""
    config, flavor = encoder_config(state_dict)
    num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else None
    with torch.device("meta"):
        model = create_model(flavor or "swin_t", num_classes=num_classes, **config)
        if "token_head.weight" in state_dict:
            vocabulary = Tokenizer()
            vocabulary.vocab_size = state_dict["token_head.weight"].shape[0]
            model = BEVTPretrainer(model, vocabulary)
    expected = model.state_dict() if num_classes or "token_head.weight" in state_dict else {
        f"encoder.{k}": v for k, v in model.state_dict().items()}
    check_keys(expected, state_dict, "the converted checkpoint")
    return config, flavor


# ----------------------------------------------------------------------------------------------
# Weight surgery shared by the converters and by training (stage 1 -> stage 2)
# ----------------------------------------------------------------------------------------------


def inflate_patch_embed(weight_2d, frames=2):
    """(C,3,4,4) -> (C,3,frames,4,4): repeated over time and divided by `frames`, so a static clip
    embeds exactly like the image."""
    return weight_2d.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames


def resize_bias_table(table, window_size, align_corners=False):
    """Bias table of any temporal window -> `window_size`, by trilinear interpolation over the
    (t,h,w) relative offsets; a 2D table (one temporal offset) is tiled over all offsets.
    The spatial window must already match. The released SSv2 finetuning resizes 8 -> 16 with
    PyTorch's default align_corners=False: offsets 0 and +-7 (-> +-15) keep their rows either way,
    the ones between read other positions (new +1 reads old +0.484, not +0.467)."""
    t, h, w = (2 * n - 1 for n in window_size)
    rows, heads = table.shape
    if rows % (h * w):
        raise CheckpointError(f"bias table with {rows} rows does not fit a {window_size[1]}x{window_size[2]} window")
    if rows == h * w:  # a 2D table: tiled exactly (interpolating from one row may round by an ulp)
        return table.repeat(t, 1)
    grid = table.t().reshape(1, heads, rows // (h * w), h, w)
    resized = F.interpolate(grid.float(), size=(t, h, w), mode="trilinear", align_corners=align_corners)
    return resized.reshape(heads, t * h * w).t().to(table.dtype).contiguous()


def resize_bias_tables(state_dict, window_size, align_corners=False):
    """Every relative-position bias table of `state_dict` resized to `window_size` (new dict)."""
    rows = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
    return {k: resize_bias_table(v, window_size, align_corners) if k.endswith(_TABLE) and v.shape[0] != rows else v
            for k, v in state_dict.items()}


def inflate_image_checkpoint(state_dict, window_size=DEFAULT_WINDOW):
    """Initialise the video stream from an image-stream (stage 1) bevt checkpoint (new dict).

    The video patch embedding becomes the 2D one inflated over 2 frames (repeat, /2) and every
    bias table gets its temporal-offset-0 slice (the only one the image stream trained) tiled over
    the temporal offsets of `window_size`. Keys may carry any prefix (`encoder.`, ...).
    """
    out = dict(state_dict)
    spatial = (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
    for key, value in state_dict.items():
        if key.endswith("patch_embed_2d.proj.weight"):
            out[key.replace("patch_embed_2d.", "patch_embed.")] = inflate_patch_embed(value)
        elif re.search(r"patch_embed_2d\.(proj\.bias|norm\.weight|norm\.bias)$", key):
            out[key.replace("patch_embed_2d.", "patch_embed.")] = value.clone()
        elif key.endswith(_TABLE):
            if value.shape[0] % spatial:
                raise CheckpointError(f"{key} has {value.shape[0]} rows, not a multiple of a "
                                      f"{window_size[1]}x{window_size[2]} window's {spatial}")
            centre = value.shape[0] // spatial // 2 * spatial  # first row of temporal offset 0
            out[key] = resize_bias_table(value[centre : centre + spatial], window_size)
    return out


def _add_image_stream(state_dict):
    """Give a video-only encoder state dict (keys without prefix) the image-stream parameters.

    The 2D embedding is the 3D one summed over its 2 frames (inverse of the inflation), so an
    image x runs exactly like the static clip [x, x]; the mask token starts at zero (only
    pretraining uses it).
    """
    if "patch_embed_2d.proj.weight" not in state_dict:
        state_dict["patch_embed_2d.proj.weight"] = state_dict["patch_embed.proj.weight"].sum(2)
        for name in ("proj.bias", "norm.weight", "norm.bias"):
            state_dict[f"patch_embed_2d.{name}"] = state_dict[f"patch_embed.{name}"].clone()
    if "mask_token" not in state_dict:
        embed_dim = state_dict["patch_embed.proj.weight"].shape[0]
        state_dict["mask_token"] = torch.zeros(1, 1, embed_dim, dtype=state_dict["patch_embed.proj.weight"].dtype)


def _with_prefix(encoder_state, head_state):
    return {**{f"encoder.{k}": v for k, v in encoder_state.items()}, **head_state}


# ----------------------------------------------------------------------------------------------
# Converters
# ----------------------------------------------------------------------------------------------


def _torchvision_key(key):
    """torchvision swin3d key -> (bevt encoder key or None for the head, head key or None)."""
    if match := re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key):  # features.{2i}.{j}: blocks
        stage, block, rest = int(match[1]), match[2], match[3]
        rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", rest))
        if stage % 2 == 0:
            return f"layers.{stage // 2}.blocks.{block}.{rest}"
    if match := re.fullmatch(r"features\.(\d+)\.((?:reduction|norm)\..+)", key):  # features.{2i+1}
        if int(match[1]) % 2 == 1:
            return f"layers.{int(match[1]) // 2}.downsample.{match[2]}"
    if re.fullmatch(r"(patch_embed\.(proj|norm)|norm)\.(weight|bias)", key):
        return key
    return None


def from_torchvision(state_dict):
    """torchvision `swin3d_t/s/b` state dict (head included) -> `create_model(..., num_classes=N)`.

    The image stream, which torchvision lacks, gets the video embedding folded over its 2 frames
    and a zero mask token, so the result loads strictly.
    """
    encoder, head, unexpected = {}, {}, []
    for key, value in state_dict.items():
        if key.endswith(_BUFFERS):
            continue
        if key in ("head.weight", "head.bias"):
            head[key] = value
        elif (ours := _torchvision_key(key)) is not None:
            encoder[ours] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(f"the checkpoint does not match the model; unexpected keys: {preview_keys(unexpected)} "
                              "(is this a torchvision swin3d state dict?)")
    if "patch_embed.proj.weight" not in encoder:
        raise CheckpointError("the checkpoint does not match the model; missing keys: patch_embed.proj.weight")
    _add_image_stream(encoder)
    return _with_prefix(encoder, head)


def select_ema(state_dict, use_ema=None):
    """The weights of an official checkpoint with mmcv EMAHook buffers: each parameter `p.q`
    replaced by its `ema_p_q` buffer (`use_ema` True, or None when there are such buffers), or
    kept with the buffers dropped (False). Logs which it took. A `module.` prefix is stripped."""
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    ema_keys = {key for key in state if key.startswith("ema_")}
    if not ema_keys:
        if use_ema:
            raise CheckpointError("the checkpoint has no ema_* weights (mmcv EMAHook buffers); convert without --ema")
        return state
    plain = {key: value for key, value in state.items() if key not in ema_keys}
    twins = {key: f"ema_{key.replace('.', '_')}" for key in plain}
    if use_ema is False:
        log.info("using the raw weights; dropped %d ema_* (EMA) buffers", len(ema_keys))
        return plain
    replaced = [key for key, twin in twins.items() if twin in ema_keys]
    orphans = ema_keys - set(twins.values())
    if orphans:
        raise CheckpointError(f"ema_* buffers without a matching weight: {preview_keys(sorted(orphans))}")
    log.info("using the EMA weights (mmcv EMAHook ema_* buffers) for %d of %d tensors; the raw weights "
             "are dropped (convert with --no-ema to keep them)", len(replaced), len(plain))
    return {key: state[twins[key]] if key in replaced else value for key, value in plain.items()}


def _swap_fuse_columns(weight):
    """Released fuse Linear reads [stage 3 (4C), up (8C)], bevt's [up (8C), stage 3 (4C)]."""
    stage3 = weight.shape[0] // 2
    return torch.cat([weight[:, stage3:], weight[:, :stage3]], dim=1)


def _pretraining_parts(parts):
    """{released key (prefixes stripped): tensor} of the decoders and token head -> BEVTPretrainer keys."""
    out, unknown = {}, []
    for key, value in parts.items():
        old = next((prefix for prefix in _PRETRAINING_MODULES if key.startswith(prefix)), None)
        if old is None:
            unknown.append(key)
            continue
        new = _PRETRAINING_MODULES[old] + key.removeprefix(old)
        out[new] = _swap_fuse_columns(value) if new.endswith("fuse.weight") else value
    if unknown:
        raise CheckpointError(f"unexpected keys in the pretraining parts: {preview_keys(sorted(unknown))}")
    absent = [new for new in _PRETRAINING_MODULES.values() if not any(k.startswith(new) for k in out)]
    if absent:
        raise CheckpointError(f"not a BEVT pretraining checkpoint: nothing for {', '.join(a[:-1] for a in absent)} "
                              "(expected backbone.fpn / lm_down / fpn_s / lm_down_st / fpn_t and cls_head.lm_head)")
    return out


def from_official(state_dict, window_size=None, pretraining=False, use_ema=None):
    """Official Video Swin / BEVT (mmaction2) or 2D Swin state dict -> bevt keys.

    Strips `module.`/`backbone.`/`encoder.` prefixes, drops rebuilt buffers, maps
    `cls_head.fc_cls` to `head`. BEVT's pretraining parts (decoders, token head) are dropped, or
    with `pretraining=True` mapped to a `BEVTPretrainer` state dict (see the module doc); the
    frozen dVAE is always dropped. mmcv EMAHook buffers (`ema_*`, finetuned checkpoints) are
    resolved by `select_ema(use_ema)`.
    A 2D checkpoint (4-D patch embedding, e.g. BEVT's image stream) is inflated to 3D: its patch
    embedding becomes the image stream's and, inflated, the video one; its 2D bias tables are
    tiled over the temporal offsets; a 2D classification head is dropped. Bias tables are
    resized to `window_size` (None: 3D tables kept, 2D ones tiled for 8x7x7).
    """
    encoder, head, parts, dvae = {}, {}, {}, 0
    for key, value in select_ema(state_dict, use_ema).items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith(_DVAE):
            dvae += 1
        elif key.endswith(_BUFFERS):
            continue
        elif key.startswith(_PRETRAINING_ONLY):
            parts[key] = value
        elif key.startswith("cls_head.fc_cls."):
            head["head." + key.removeprefix("cls_head.fc_cls.")] = value
        else:
            encoder[key] = value
    if "patch_embed.proj.weight" not in encoder:
        raise CheckpointError("the checkpoint does not match the model; missing keys: patch_embed.proj.weight "
                              "(not a Swin checkpoint?)")
    if dvae:
        log.info("dropped the dVAE tokenizer (%d tensors): bevt reads it from tokenizer.path", dvae)
    if parts and not pretraining:
        log.info("dropped the pretraining decoders and token head (%d tensors); keep them with --pretraining", len(parts))

    is_2d = encoder["patch_embed.proj.weight"].dim() == 4
    if is_2d:
        for name in ("proj.weight", "proj.bias", "norm.weight", "norm.bias"):
            if f"patch_embed.{name}" in encoder:
                encoder.setdefault(f"patch_embed_2d.{name}", encoder[f"patch_embed.{name}"])
        encoder["patch_embed.proj.weight"] = inflate_patch_embed(encoder["patch_embed_2d.proj.weight"])
        dropped = [k for k in encoder if k.startswith("head.")]
        for key in dropped:
            del encoder[key]
        if dropped:
            log.info("dropped the 2D classification head (%s)", ", ".join(dropped))
    _add_image_stream(encoder)
    if window_size is not None or is_2d:
        encoder = resize_bias_tables(encoder, tuple(window_size or DEFAULT_WINDOW))
    if pretraining:
        return {**_with_prefix(encoder, {}), **_pretraining_parts(parts)}
    return _with_prefix(encoder, head)


def _timm_key(key, downsample_at_stage_start):
    """timm 2D Swin key -> bevt encoder key; None for the classifier and rebuilt buffers."""
    if key.startswith("head.") or key.endswith(_BUFFERS):
        return None
    if key.startswith("absolute_pos_embed"):
        raise CheckpointError("absolute position embeddings (ape=True) have no place in Video Swin")
    if match := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
        stage = int(match[1]) - 1 if downsample_at_stage_start else int(match[1])
        return f"layers.{stage}.downsample.{match[2]}"
    if re.fullmatch(r"patch_embed\.(proj|norm)\.(weight|bias)", key):
        return key.replace("patch_embed.", "patch_embed_2d.")
    return key


def from_timm(state_dict, window_size=None):
    """timm 2D Swin (`swin_*_patch4_window7_224` etc.) -> bevt encoder keys, inflated to 3D as the
    released `pretrained2d` path does.

    timm >= 0.9 puts each patch merging at the start of the next stage (`layers.N.downsample`
    merges stage N-1's output); older timm and Microsoft's checkpoints at the end of its own
    stage, like bevt (told apart by `layers.0.downsample`, as timm does). The 2D patch embedding
    becomes the image stream's and, repeated over 2 frames and divided by 2, the video one; each
    (2Wh-1)(2Ww-1)-row bias table is tiled over the 2Wt-1 temporal offsets of `window_size`
    (default 8x7x7), after a bicubic resize when its spatial window differs (as released); the
    ImageNet classifier is dropped. The mask token starts at zero.
    """
    state = {key.removeprefix("module.").removeprefix("model."): value for key, value in state_dict.items()}
    if "patch_embed.proj.weight" not in state or state["patch_embed.proj.weight"].dim() != 4:
        raise CheckpointError("not a timm 2D Swin state dict: no 4-D patch_embed.proj.weight")
    at_start = "layers.0.downsample.reduction.weight" not in state
    encoder = {}
    for key, value in state.items():
        if (ours := _timm_key(key, at_start)) is not None:
            encoder[ours] = value
    dropped = [k for k in state if k.startswith("head.")]
    if dropped:
        log.info("dropped the 2D classification head (%s)", ", ".join(dropped))
    encoder["patch_embed.proj.weight"] = inflate_patch_embed(encoder["patch_embed_2d.proj.weight"])
    for name in ("proj.bias", "norm.weight", "norm.bias"):
        encoder[f"patch_embed.{name}"] = encoder[f"patch_embed_2d.{name}"].clone()
    _add_image_stream(encoder)
    window = tuple(window_size or DEFAULT_WINDOW)
    for key, table in encoder.items():
        if key.endswith(_TABLE):
            encoder[key] = _tile_2d_table(table, window, key)
    return _with_prefix(encoder, {})


def _tile_2d_table(table, window_size, key):
    """A 2D ((2s-1)^2, heads) table -> the 3D table of `window_size`: resized bicubically to the
    spatial window if it differs (as the release does), then repeated for every temporal offset."""
    rows, heads = table.shape
    side = round(rows**0.5)
    if side * side != rows:
        raise CheckpointError(f"{key} has {rows} rows: not the table of a square 2D window")
    h, w = 2 * window_size[1] - 1, 2 * window_size[2] - 1
    if (side, side) != (h, w):
        log.info("resizing %s from a %dx%d to a %dx%d window (bicubic, as released)", key, (side + 1) // 2,
                 (side + 1) // 2, window_size[1], window_size[2])
        grid = table.t().reshape(1, heads, side, side).float()
        table = F.interpolate(grid, size=(h, w), mode="bicubic").reshape(heads, h * w).t().to(table.dtype)
    return table.repeat(2 * window_size[0] - 1, 1).contiguous()


def run_convert(args):
    """`bevt convert --from {torchvision,official,timm} IN OUT [--window t,h,w] [--pretraining]
    [--ema/--no-ema]`: writes safetensors."""
    window = parse_window(args.window) if args.window else None
    state = load_checkpoint_file(args.input)
    pretraining = getattr(args, "pretraining", False)
    if pretraining and args.source != "official":
        raise CheckpointError("--pretraining needs --from official (a released BEVT pretraining checkpoint)")
    if args.source == "torchvision":
        converted = from_torchvision(state)
        if window is not None:
            converted = resize_bias_tables(converted, window)
    elif args.source == "timm":
        converted = from_timm(state, window_size=window)
    else:
        converted = from_official(state, window_size=window, pretraining=pretraining, use_ema=getattr(args, "ema", None))
    config, flavor = check_converted(converted)
    num_classes = converted["head.weight"].shape[0] if "head.weight" in converted else None
    metadata = {
        "format": "bevt",
        "model": flavor or "custom",
        "window_size": ",".join(map(str, config["window_size"])),
        "num_classes": str(num_classes or 0),
        "converted_from": f"{args.source}:{Path(args.input).name}",
    }
    if pretraining:
        metadata["contents"] = "BEVTPretrainer"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in converted.items()}, args.output, metadata=metadata)
    contents = ("encoder, decoders and token head" if pretraining
                else "no head" if num_classes is None else f"{num_classes} classes")
    print(f"wrote {args.output}: {flavor or 'custom'} window {metadata['window_size']}, "
          f"{len(converted)} tensors, {contents}")
    if pretraining:
        print("continue it with run.init_from=<this file> and model.image_shift_mask=official "
              "(the image stream it was trained with)")
    return 0
