"""Checkpoint conversion: torchvision, official Video Swin / BEVT, 2D inflation, bias tables, errors."""

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models.video.swin_transformer import SwinTransformer3d

from bevt.cli import main
from bevt.checkpoint import load_strict
from bevt.models.convert import (
    check_converted,
    from_official,
    from_timm,
    from_torchvision,
    inflate_image_checkpoint,
    inflate_patch_embed,
    load_checkpoint_file,
    resize_bias_table,
)
from bevt.config import load_config
from bevt.errors import CheckpointError
from bevt.models import create_model
from bevt.models.pretrainer import BEVTPretrainer
from bevt.tokenizers.base import Tokenizer

DEBUG_WINDOW = (2, 4, 4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchvision_debug(num_classes=5):
    """torchvision's Video Swin with the shape of bevt's debug flavor."""
    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                             window_size=list(DEBUG_WINDOW), stochastic_depth_prob=0.0, num_classes=num_classes)


def official_state_dict(classifier):
    """Our classifier's weights under the official mmaction2 names: `backbone.`/`cls_head.fc_cls.`
    prefixes, rebuilt buffers, a DDP `module.` prefix, and BEVT's pretraining-only parts."""
    state = {}
    for key, value in classifier.state_dict().items():
        if key.startswith("encoder."):
            state["module.backbone." + key.removeprefix("encoder.")] = value.clone()
        else:
            state["module.cls_head.fc_cls." + key.removeprefix("head.")] = value.clone()
    state["module.backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(32, 32, dtype=torch.long)
    state["module.backbone.layers.0.blocks.1.attn_mask"] = torch.zeros(4, 32, 32)
    state["module.backbone.lm_down.weight"] = torch.zeros(256, 384)
    state["module.backbone.fpn_s.0.weight"] = torch.zeros(256, 256, 1, 2, 2)
    state["module.cls_head.lm_head.weight"] = torch.zeros(8192, 256)
    state["module.cls_head.vae_encoder.blocks.input.w"] = torch.zeros(256, 3, 7, 7)
    return state


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# ----------------------------------------------------------------------------------------------
# torchvision
# ----------------------------------------------------------------------------------------------


def test_from_torchvision_loads_strictly_and_keeps_every_weight():
    reference = torchvision_debug().state_dict()
    converted = from_torchvision(reference)
    load_strict(create_model("debug", num_classes=5), converted, "test")
    values = {id(v) for v in converted.values()}
    for key, value in reference.items():
        assert key.endswith("relative_position_index") or id(value) in values, key
    assert check_converted(converted)[1] == "debug"


def test_from_torchvision_matches_torchvision_outputs():
    reference = torchvision_debug().eval()
    model = create_model("debug", num_classes=5, reference_bias_slicing=True).eval()
    load_strict(model, from_torchvision(reference.state_dict()), "test")
    video = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        assert (model(video) - reference(video)).abs().max() <= 1e-5


def test_from_torchvision_matches_torchvision_gradients():
    """The input gradient crosses every block's backward: the shifted blocks' token gathers and
    the CPU attention kernel against torchvision's roll + partition under autograd."""
    torch.manual_seed(0)
    reference = torchvision_debug().eval()
    model = create_model("debug", num_classes=5, reference_bias_slicing=True).eval()
    load_strict(model, from_torchvision(reference.state_dict()), "test")
    video, projection = torch.randn(2, 3, 8, 64, 64), torch.randn(5)
    gradients = []
    for network in (model, reference):
        clip = video.clone().requires_grad_()
        (network(clip) @ projection).sum().backward()
        gradients.append(clip.grad)
    ours, theirs = gradients
    assert theirs.abs().max() > 1e-3
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def test_the_added_image_embedding_sees_an_image_like_the_static_clip():
    converted = from_torchvision(torchvision_debug().state_dict())
    image = torch.randn(2, 3, 32, 32)
    clip = torch.stack([image, image], dim=2)
    as_video = F.conv3d(clip, converted["encoder.patch_embed.proj.weight"], stride=(2, 4, 4))[:, :, 0]
    as_image = F.conv2d(image, converted["encoder.patch_embed_2d.proj.weight"], stride=4)
    assert torch.allclose(as_video, as_image, atol=1e-5)
    assert not converted["encoder.mask_token"].any()


# ----------------------------------------------------------------------------------------------
# Official Video Swin / BEVT
# ----------------------------------------------------------------------------------------------


def test_from_official_round_trip():
    classifier = create_model("debug", num_classes=5)
    assert_same_tensors(from_official(official_state_dict(classifier)), classifier.state_dict())


def test_from_official_without_image_stream_fills_it_in():
    classifier = create_model("debug", num_classes=5)
    state = {k: v for k, v in official_state_dict(classifier).items()
             if "patch_embed_2d" not in k and "mask_token" not in k}
    converted = from_official(state)
    load_strict(create_model("debug", num_classes=5), converted, "test")
    assert torch.allclose(converted["encoder.patch_embed_2d.proj.weight"],
                          classifier.state_dict()["encoder.patch_embed.proj.weight"].sum(2))


def test_from_official_inflates_a_2d_checkpoint():
    """An image-stream / 2D Swin checkpoint: 4-D patch embedding, 2D bias tables, a 2D head."""
    encoder = create_model("debug")
    state = {}
    for key, value in encoder.state_dict().items():
        if key.startswith(("patch_embed.", "mask_token")):
            continue
        if key.endswith("relative_position_bias_table"):
            value = torch.randn(7 * 7, value.shape[1])  # (2*4-1)^2 rows: a 4x4 window
        state[key.replace("patch_embed_2d.", "patch_embed.")] = value
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)

    converted = from_official(state, window_size=DEBUG_WINDOW)
    load_strict(encoder, {k.removeprefix("encoder."): v for k, v in converted.items()}, "test")
    assert not any(k.startswith("head.") for k in converted)
    assert torch.equal(converted["encoder.patch_embed_2d.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(converted["encoder.patch_embed.proj.weight"], inflate_patch_embed(state["patch_embed.proj.weight"]))
    table_2d = state["layers.2.blocks.1.attn.relative_position_bias_table"]
    tiled = converted["encoder.layers.2.blocks.1.attn.relative_position_bias_table"].view(3, 49, -1)
    for offset in range(3):
        assert torch.equal(tiled[offset], table_2d)


def test_from_official_resizes_bias_tables_to_another_temporal_window():
    classifier = create_model("debug", num_classes=5)
    converted = from_official(official_state_dict(classifier), window_size=(4, 4, 4))
    assert converted["encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (7 * 49, 1)
    config, flavor = check_converted(converted)
    assert flavor == "debug" and config["window_size"] == (4, 4, 4)
    load_strict(create_model("debug", num_classes=5, window_size=(4, 4, 4)), converted, "test")


def test_bias_table_8_to_16_interpolation():
    """15 -> 31 temporal offsets: trilinear with aligned corners keeps offsets 0 and +-7 (-> +-15)."""
    table = torch.randn(15 * 13 * 13, 4)
    resized = resize_bias_table(table, (16, 7, 7), align_corners=True)
    assert resized.shape == (31 * 13 * 13, 4)
    before, after = table.view(15, 169, 4), resized.view(31, 169, 4)
    for old, new in ((0, 0), (7, 15), (14, 30)):
        assert torch.allclose(after[new], before[old], atol=1e-6)
    midpoint = 16 * 14 / 30  # new offset +1 (row 16) reads old row 7.47, between offsets 0 and +1
    assert torch.allclose(after[16], before[7] * (8 - midpoint) + before[8] * (midpoint - 7), atol=1e-5)
    with pytest.raises(CheckpointError, match="does not fit"):
        resize_bias_table(torch.zeros(100, 4), (16, 7, 7))


# ----------------------------------------------------------------------------------------------
# Stage 1 -> stage 2
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["encoder.", "model.encoder."])
def test_inflate_image_checkpoint(prefix):
    encoder = create_model("debug")
    state = {prefix + k: v for k, v in encoder.state_dict().items()}
    inflated = inflate_image_checkpoint(state, window_size=DEBUG_WINDOW)
    assert torch.equal(inflated[prefix + "patch_embed.proj.weight"],
                       inflate_patch_embed(state[prefix + "patch_embed_2d.proj.weight"]))
    assert torch.equal(inflated[prefix + "patch_embed.norm.weight"], state[prefix + "patch_embed_2d.norm.weight"])
    key = prefix + "layers.1.blocks.1.attn.relative_position_bias_table"
    offset_zero = state[key].view(3, 49, -1)[1]  # offsets -1, 0, +1: the middle block
    assert all(torch.equal(block, offset_zero) for block in inflated[key].view(3, 49, -1))
    wider = inflate_image_checkpoint(state, window_size=(4, 4, 4))[key]  # stage 2 may use another window
    assert all(torch.equal(block, offset_zero) for block in wider.view(7, 49, -1))
    with pytest.raises(CheckpointError, match="rows"):
        inflate_image_checkpoint(state, window_size=(8, 7, 7))


# ----------------------------------------------------------------------------------------------
# Errors and files
# ----------------------------------------------------------------------------------------------


def test_bad_checkpoints_name_the_keys():
    state = from_torchvision(torchvision_debug().state_dict())
    with pytest.raises(CheckpointError, match="unexpected keys: classifier.weight"):
        from_torchvision({**torchvision_debug().state_dict(), "classifier.weight": torch.zeros(1)})
    broken = {k: v for k, v in state.items() if k != "encoder.norm.weight"}
    broken["encoder.extra"] = torch.zeros(1)
    broken["head.weight"] = torch.zeros(3, 256)
    with pytest.raises(CheckpointError) as error:
        load_strict(create_model("debug", num_classes=5), broken, "test")
    message = str(error.value)
    assert "missing keys: encoder.norm.weight" in message and "unexpected keys: encoder.extra" in message
    assert "head.weight (3, 256) vs (5, 256)" in message
    with pytest.raises(CheckpointError, match="not a Swin checkpoint"):
        from_official({"state_dict": torch.zeros(1)})


def test_checkpoint_files_are_read_without_unpickling_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": CheckpointError("not a tensor")}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_file(tmp_path / "missing.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"epoch": 3}}, tmp_path / "ok.pth")
    assert torch.equal(load_checkpoint_file(tmp_path / "ok.pth")["w"], torch.ones(2))


def test_cli_convert_writes_safetensors(tmp_path, capsys):
    torch.save(torchvision_debug().state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "bevt.safetensors"
    assert main(["convert", "--from", "torchvision", str(tmp_path / "tv.pth"), str(out)]) == 0
    assert "debug window 2,4,4" in capsys.readouterr().out
    with safe_open(out, "pt") as f:
        assert f.metadata()["model"] == "debug" and f.metadata()["num_classes"] == "5"
    load_strict(create_model("debug", num_classes=5), load_file(out), "test")

    torch.save({"state_dict": official_state_dict(create_model("debug", num_classes=5))}, tmp_path / "official.pth")
    wide = tmp_path / "wide.safetensors"
    assert main(["convert", "--from", "official", "--window", "4,4,4", str(tmp_path / "official.pth"), str(wide)]) == 0
    load_strict(create_model("debug", num_classes=5, window_size=(4, 4, 4)), load_file(wide), "test")

    assert main(["convert", "--from", "official", str(tmp_path / "missing.pth"), str(wide)]) == 2
    assert main(["convert", "--from", "official", "--window", "16x7x7", str(tmp_path / "official.pth"), str(wide)]) == 2


# ----------------------------------------------------------------------------------------------
# The released BEVT pretraining checkpoint (xyzforever/BEVT, SwinTransformerBEVT + BEVTMultiSourceHead)
# ----------------------------------------------------------------------------------------------
# Layout and forward as read in the release's mmaction/models/backbones/swin_transformer_bevt.py
# and heads/bevt_multisource_head.py (written here from those facts, not from bevt's code):
# - keys under `backbone.` (encoder as Video Swin, `patch_embed_2d`, `mask_token`, `norm`, and the
#   decoders `fpn.0` ConvTranspose2d, `lm_down` Linear, `fpn_s.0` / `fpn_t.0` ConvTranspose3d,
#   `lm_down_st.0` Linear) and `cls_head.` (`lm_head` Linear, `vae_encoder.*` the frozen dVAE);
# - decoders: cat([stage 3, upsampled stage 4]) -> Linear (-> fpn_t for video) -> `norm` -> lm_head;
# - image stream: window never clipped, shift window // 2; every block applies the 2D shift mask,
#   only odd blocks roll; the bias is the temporal-offset-0 slice of the 3D table.

RELEASED = dict(embed_dim=32, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=DEBUG_WINDOW, vocab=64)


def released_pretraining_state(seed=0, embed_dim=32, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=DEBUG_WINDOW,
                               vocab=64):
    """A state dict with the released key names and shapes, random weights (bias tables N(0,1), so
    that masks and offsets matter)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    c, f = embed_dim, embed_dim * 8
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    s = {"backbone.patch_embed.proj.weight": rand(c, 3, 2, 4, 4, std=0.2), "backbone.patch_embed.proj.bias": rand(c),
         "backbone.patch_embed_2d.proj.weight": rand(c, 3, 4, 4, std=0.2), "backbone.patch_embed_2d.proj.bias": rand(c),
         "backbone.mask_token": rand(1, 1, c, std=1.0)}
    for embed in ("patch_embed", "patch_embed_2d"):
        s[f"backbone.{embed}.norm.weight"], s[f"backbone.{embed}.norm.bias"] = rand(c, mean=1.0), rand(c)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = c * 2**i
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                s[b + norm + ".weight"], s[b + norm + ".bias"] = rand(d, std=0.1, mean=1.0), rand(d, std=0.1)
            s[b + "attn.relative_position_bias_table"] = rand(rows, h, std=1.0)
            n = window[0] * window[1] * window[2]
            s[b + "attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)  # a buffer the model rebuilds
            for name, (out, inp) in {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (4 * d, d),
                                     "mlp.fc2": (d, 4 * d)}.items():
                s[b + name + ".weight"], s[b + name + ".bias"] = rand(out, inp, std=inp**-0.5), rand(out)
        if i < len(depths) - 1:
            m = f"backbone.layers.{i}.downsample."
            s[m + "norm.weight"], s[m + "norm.bias"] = rand(4 * d, mean=1.0), rand(4 * d)
            s[m + "reduction.weight"] = rand(2 * d, 4 * d, std=(4 * d) ** -0.5)
    s["backbone.norm.weight"], s["backbone.norm.bias"] = rand(f, mean=1.0), rand(f)
    for name, shape in {"fpn.0": (f, f, 2, 2), "fpn_s.0": (f, f, 1, 2, 2), "fpn_t.0": (f, f, 2, 1, 1)}.items():
        s[f"backbone.{name}.weight"], s[f"backbone.{name}.bias"] = rand(*shape, std=f**-0.5), rand(f)
    for name in ("lm_down", "lm_down_st.0"):
        s[f"backbone.{name}.weight"], s[f"backbone.{name}.bias"] = rand(f, f + f // 2, std=(1.5 * f) ** -0.5), rand(f)
    s["cls_head.lm_head.weight"], s["cls_head.lm_head.bias"] = rand(vocab, f, std=f**-0.5), rand(vocab)
    s["cls_head.vae_encoder.blocks.input.w"] = rand(64, 3, 7, 7)  # the frozen dVAE rides along in the release
    s["cls_head.vae_encoder.blocks.input.b"] = rand(64)
    return s


def _layer_norm(x, s, key):
    return F.layer_norm(x, x.shape[-1:], s[key + ".weight"], s[key + ".bias"], eps=1e-5)


def _released_attention(x, s, block, heads, window, shift, mask_regions, table_window):
    """One window-attention sublayer written as dense attention over the whole (T,H,W) map: pairs
    in different windows get -inf, pairs in one window but different shift regions -100.

    `shift` is the roll applied before partitioning (0 for unrolled blocks); `mask_regions` the
    per-axis shift used to label regions (None: no shift mask)."""
    b, t, h, w, c = x.shape
    x = torch.roll(x, [-v for v in shift], dims=(1, 2, 3))
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 3)
    size, win = torch.tensor([t, h, w]), torch.tensor(window)
    window_id, inner = coords // win, coords % win
    same_window = (window_id[:, None] == window_id[None]).all(-1)
    offset = inner[:, None] - inner[None] + torch.tensor(table_window) - 1  # (L, L, 3), >= 0
    wt, wh, ww = (2 * v - 1 for v in table_window)
    rows = (offset[..., 0] * wh + offset[..., 1]) * ww + offset[..., 2]
    bias = s[block + "attn.relative_position_bias_table"][rows].permute(2, 0, 1)  # (heads, L, L)
    logits_mask = torch.zeros(same_window.shape).masked_fill(~same_window, float("-inf"))
    if mask_regions is not None:
        cut = torch.tensor(mask_regions)
        region = (coords >= size - win).long() + (coords >= size - cut).long() * (cut > 0).long()
        logits_mask = logits_mask.masked_fill(same_window & (region[:, None] != region[None]).any(-1), -100.0)
    qkv = F.linear(x.reshape(b, -1, c), s[block + "attn.qkv.weight"], s[block + "attn.qkv.bias"])
    q, k, v = qkv.view(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attention = (q * (c // heads) ** -0.5 @ k.transpose(-1, -2) + bias + logits_mask).softmax(-1)
    out = F.linear((attention @ v).transpose(1, 2).reshape(b, t, h, w, c), s[block + "attn.proj.weight"],
                   s[block + "attn.proj.bias"])
    return torch.roll(out, list(shift), dims=(1, 2, 3))


def released_token_logits(s, pixels, cell_mask, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8), window=DEBUG_WINDOW):
    """The released pretraining forward of an image (B,3,H,W) or video (B,3,T,H,W), to token logits.
    Only for sizes where no window is clipped or padded (every map a multiple of the window)."""
    image = pixels.dim() == 4
    p = "backbone.patch_embed_2d" if image else "backbone.patch_embed"
    if image:
        x = F.conv2d(pixels, s[p + ".proj.weight"], s[p + ".proj.bias"], stride=4).permute(0, 2, 3, 1)[:, None]
        patch_mask = cell_mask[:, None].repeat_interleave(4, -2).repeat_interleave(4, -1)
    else:
        x = F.conv3d(pixels, s[p + ".proj.weight"], s[p + ".proj.bias"], stride=(2, 4, 4)).permute(0, 2, 3, 4, 1)
        patch_mask = cell_mask.repeat_interleave(4, -2).repeat_interleave(4, -1)
    x = _layer_norm(x, s, p + ".norm")
    x = torch.where(patch_mask[..., None], s["backbone.mask_token"], x)
    outputs = []
    for i, depth in enumerate(depths):
        t, h, w = x.shape[1:4]
        if image:
            win, half = (1, *window[1:]), (0, window[1] // 2, window[2] // 2)
        else:
            win = tuple(min(n, v) for n, v in zip((t, h, w), window))
            half = tuple(0 if n <= v else v // 2 for n, v in zip((t, h, w), window))
        assert all(n % v == 0 for n, v in zip((t, h, w), win)), "the reference does not pad"
        for j in range(depth):
            block = f"backbone.layers.{i}.blocks.{j}."
            shifted = j % 2 == 1 and any(half)
            roll = half if shifted else (0, 0, 0)
            regions = half if (image and any(half)) or shifted else None  # images: the mask in every block
            x = x + _released_attention(_layer_norm(x, s, block + "norm1"), s, block, heads[i], win, roll, regions, window)
            hidden = F.gelu(F.linear(_layer_norm(x, s, block + "norm2"), s[block + "mlp.fc1.weight"], s[block + "mlp.fc1.bias"]))
            x = x + F.linear(hidden, s[block + "mlp.fc2.weight"], s[block + "mlp.fc2.bias"])
        outputs.append(x)
        if i < len(depths) - 1:
            m = f"backbone.layers.{i}.downsample."
            x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
            x = F.linear(_layer_norm(x, s, m + "norm"), s[m + "reduction.weight"])
    stage3, stage4 = outputs[2], outputs[3]
    if image:
        up = F.conv_transpose2d(stage4[:, 0].permute(0, 3, 1, 2), s["backbone.fpn.0.weight"], s["backbone.fpn.0.bias"],
                                stride=2).permute(0, 2, 3, 1)
        x = F.linear(torch.cat([stage3[:, 0], up], -1), s["backbone.lm_down.weight"], s["backbone.lm_down.bias"])
    else:
        up = F.conv_transpose3d(stage4.permute(0, 4, 1, 2, 3), s["backbone.fpn_s.0.weight"], s["backbone.fpn_s.0.bias"],
                                stride=(1, 2, 2)).permute(0, 2, 3, 4, 1)
        x = F.linear(torch.cat([stage3, up], -1), s["backbone.lm_down_st.0.weight"], s["backbone.lm_down_st.0.bias"])
        x = F.conv_transpose3d(x.permute(0, 4, 1, 2, 3), s["backbone.fpn_t.0.weight"], s["backbone.fpn_t.0.bias"],
                               stride=(2, 1, 1)).permute(0, 2, 3, 4, 1)
    return F.linear(_layer_norm(x, s, "backbone.norm"), s["cls_head.lm_head.weight"], s["cls_head.lm_head.bias"])


def vocabulary(size):
    """The pretrainer needs only the tokenizer's vocabulary size to be built."""
    tokenizer = Tokenizer()
    tokenizer.vocab_size = size
    return tokenizer


def converted_pretrainer(image_shift_mask="official", state=None):
    state = released_pretraining_state() if state is None else state
    model = BEVTPretrainer(create_model("debug", image_shift_mask=image_shift_mask), vocabulary(RELEASED["vocab"]))
    load_strict(model, from_official(state, pretraining=True), "the converted released checkpoint")
    return model.eval()


def test_released_pretraining_checkpoint_converts_and_loads_strictly():
    state = released_pretraining_state()
    converted = from_official({"module." + k: v for k, v in state.items()}, pretraining=True)
    model = BEVTPretrainer(create_model("debug"), vocabulary(RELEASED["vocab"]))
    load_strict(model, converted, "test")  # strict: every pretrainer key, nothing else
    assert check_converted(converted)[1] == "debug"
    assert torch.equal(converted["token_head.weight"], state["cls_head.lm_head.weight"])
    assert torch.equal(converted["encoder.norm.bias"], state["backbone.norm.bias"])
    assert torch.equal(converted["video_decoder.temporal_upsample.weight"], state["backbone.fpn_t.0.weight"])
    fuse = converted["image_decoder.fuse.weight"]  # columns: released [stage 3, up], bevt [up, stage 3]
    assert torch.equal(fuse[:, 256:], state["backbone.lm_down.weight"][:, :128])
    assert not any("vae_encoder" in k or "relative_position_index" in k for k in converted)
    encoder_only = from_official(state)  # without --pretraining: the encoder alone, as before
    assert {k.split(".")[0] for k in encoder_only} == {"encoder"}
    with pytest.raises(CheckpointError, match="not a BEVT pretraining checkpoint: nothing for video_decoder"):
        from_official({k: v for k, v in state.items() if "fpn_s" not in k and "fpn_t" not in k}, pretraining=True)


@pytest.mark.parametrize("stream", ["image", "video"])
def test_converted_released_model_gives_the_released_token_logits(stream):
    state = released_pretraining_state()
    g = torch.Generator().manual_seed(1)
    if stream == "image":  # 128 px: maps 32, 16, 8, 4 = the 4x4 window at stage 4, rolled by 2 as released
        pixels, cells = torch.randn(2, 3, 128, 128, generator=g), torch.rand(2, 8, 8, generator=g) < 0.5
    else:
        pixels, cells = torch.randn(2, 3, 4, 128, 128, generator=g), torch.rand(2, 2, 8, 8, generator=g) < 0.5
    with torch.no_grad():
        expected = released_token_logits(state, pixels, cells)
        model = converted_pretrainer("official", state)
        actual = model.token_logits(model.decode_features(pixels, cells))
        standard = converted_pretrainer("standard", state)
        standard_logits = standard.token_logits(standard.decode_features(pixels, cells))
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-4
    difference = (standard_logits - expected).abs().max()
    assert difference > 1e-2 if stream == "image" else difference <= 1e-4  # only the image stream differs


def test_cli_convert_pretraining_checkpoint_is_a_run_init(tmp_path, capsys):
    released = {"meta": {"epoch": 150}, "state_dict": released_pretraining_state()}
    torch.save(released, tmp_path / "bevt_pretrain.pth")
    out = tmp_path / "bevt_pretrain.safetensors"
    assert main(["convert", "--from", "official", "--pretraining", str(tmp_path / "bevt_pretrain.pth"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "encoder, decoders and token head" in printed and "image_shift_mask=official" in printed
    with safe_open(out, "pt") as f:
        assert f.metadata()["contents"] == "BEVTPretrainer"
    model = BEVTPretrainer(create_model("debug"), vocabulary(RELEASED["vocab"]))
    load_strict(model, load_file(out), "test")
    assert main(["convert", "--from", "torchvision", "--pretraining", str(tmp_path / "bevt_pretrain.pth"), str(out)]) == 2


def test_pretraining_continues_from_a_converted_released_checkpoint(tmp_path):
    """`run.init_from` = the converted file: `bevt pretrain` starts from exactly its weights."""
    from bevt.train.main import read_init_weights
    from bevt.train.tasks import PretrainTask

    state = released_pretraining_state()
    out = tmp_path / "released.safetensors"
    torch.save({"state_dict": state}, tmp_path / "released.pth")
    assert main(["convert", "--from", "official", "--pretraining", str(tmp_path / "released.pth"), str(out)]) == 0
    weights, source_cfg = read_init_weights(str(out))
    model = BEVTPretrainer(create_model("debug", image_shift_mask="official"), vocabulary(RELEASED["vocab"]))
    cfg = load_config("tiny_joint", [f"run.init_from={out}", "model.image_shift_mask=official"])
    PretrainTask(cfg, {}, torch.device("cpu")).init_weights(model, weights, source_cfg)
    for key, value in from_official(state, pretraining=True).items():
        assert torch.equal(model.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------------
# mmcv EMAHook buffers (released finetuned checkpoints)
# ----------------------------------------------------------------------------------------------


def with_ema_buffers(state, shift=1.0):
    """What mmcv's EMAHook adds: for every parameter `p.q` of the recogniser a buffer `ema_p_q`."""
    out = dict(state)
    for key, value in state.items():
        if not key.endswith(("relative_position_index", "attn_mask")):
            out[f"ema_{key.replace('.', '_')}"] = value + shift
    return out


def test_from_official_takes_the_ema_weights_and_says_so(caplog):
    classifier = create_model("debug", num_classes=5)
    state = {k.removeprefix("module."): v for k, v in official_state_dict(classifier).items()
             if not k.startswith(("module.backbone.lm_down", "module.backbone.fpn", "module.cls_head.lm_head",
                                  "module.cls_head.vae"))}
    ema_state = with_ema_buffers(state)
    with caplog.at_level("INFO", logger="bevt.models.convert"):
        converted = from_official(ema_state)
    assert "using the EMA weights" in caplog.text
    expected = {k: v + 1.0 for k, v in classifier.state_dict().items()}
    assert_same_tensors(converted, expected)
    caplog.clear()
    with caplog.at_level("INFO", logger="bevt.models.convert"):
        raw = from_official(ema_state, use_ema=False)
    assert "using the raw weights" in caplog.text
    assert_same_tensors(raw, classifier.state_dict())
    with pytest.raises(CheckpointError, match="no ema_"):
        from_official(state, use_ema=True)
    with pytest.raises(CheckpointError, match="without a matching weight: ema_backbone_extra"):
        from_official({**ema_state, "ema_backbone_extra": torch.zeros(1)})


# ----------------------------------------------------------------------------------------------
# timm 2D Swin -> 3D (the released `pretrained2d` inflation)
# ----------------------------------------------------------------------------------------------


def timm_debug_swin():
    """timm's own 2D Swin with the debug flavor's shape (4x4 windows), at 128 px: maps 32..4."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=128, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                            num_classes=10)
    randomise = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k.endswith("relative_position_bias_table")}
    model.load_state_dict(randomise, strict=False)  # far from their init, so a wrong row shows
    return model.eval()


def microsoft_layout(timm_state):
    """The same weights as Microsoft's (and timm < 0.9) checkpoints: merging at the end of its own
    stage, `head.*`, persistent index buffers."""
    out = {}
    for key, value in timm_state.items():
        if match := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            key = f"layers.{int(match[1]) - 1}.downsample.{match[2]}"
        out[key.replace("head.fc.", "head.")] = value
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    return out


def test_from_timm_swin_base_loads_strictly():
    import timm

    reference = timm.create_model("swin_base_patch4_window7_224", pretrained=False).state_dict()
    converted = from_timm(reference)
    config, flavor = check_converted(converted)  # strict: the keys and shapes of create_model("swin_b")
    assert flavor == "swin_b" and config["window_size"] == (8, 7, 7)
    # timm >= 0.9 merges at the start of the next stage; bevt (like the release) at the end of its own
    assert converted["encoder.layers.2.downsample.reduction.weight"] is reference["layers.3.downsample.reduction.weight"]
    assert torch.equal(converted["encoder.patch_embed.proj.weight"],
                       reference["patch_embed.proj.weight"][:, :, None].repeat(1, 1, 2, 1, 1) / 2)
    table = converted["encoder.layers.3.blocks.1.attn.relative_position_bias_table"]
    assert table.shape == (15 * 169, 32)
    assert all(torch.equal(block, reference["layers.3.blocks.1.attn.relative_position_bias_table"])
               for block in table.view(15, 169, 32))


def test_inflated_timm_swin_sees_a_static_clip_as_timm_sees_the_image():
    """A clip of one image repeated over 2 frames (one patch step) runs through the inflated video
    stream exactly like timm's 2D Swin on the image, and so does the image stream."""
    reference = timm_debug_swin()
    converted = from_timm(reference.state_dict(), window_size=DEBUG_WINDOW)
    encoder = create_model("debug").eval()
    load_strict(encoder, {k.removeprefix("encoder."): v for k, v in converted.items()}, "test")
    image = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = reference.forward_features(image)  # (B,4,4,8C) after timm's final norm
        from_clip = encoder.norm(encoder.forward_features(torch.stack([image, image], 2))["stage4"])[:, 0]
        from_image = encoder.norm(encoder.forward_features(image)["stage4"])[:, 0]
    assert (from_clip - expected).abs().max() <= 2e-5
    assert (from_image - expected).abs().max() <= 2e-5
    assert_same_tensors(from_timm(microsoft_layout(reference.state_dict()), window_size=DEBUG_WINDOW), converted)


def test_from_timm_resizes_other_spatial_windows_as_released(caplog):
    state = timm_debug_swin().state_dict()
    state = {k: torch.randn(13 * 13, v.shape[1]) if k.endswith("relative_position_bias_table") else v
             for k, v in state.items()}  # a 7x7-window checkpoint into the 4x4 debug window
    with caplog.at_level("INFO", logger="bevt.models.convert"):
        converted = from_timm(state, window_size=DEBUG_WINDOW)
    assert "from a 7x7 to a 4x4 window (bicubic" in caplog.text
    assert converted["encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (3 * 49, 1)
    with pytest.raises(CheckpointError, match="not a timm 2D Swin"):
        from_timm(torchvision_debug().state_dict())


def test_cli_convert_from_timm(tmp_path, capsys):
    torch.save(timm_debug_swin().state_dict(), tmp_path / "timm.pth")
    out = tmp_path / "inflated.safetensors"
    assert main(["convert", "--from", "timm", "--window", "2,4,4", str(tmp_path / "timm.pth"), str(out)]) == 0
    assert "debug window 2,4,4" in capsys.readouterr().out
    load_strict(create_model("debug"), {k.removeprefix("encoder."): v for k, v in load_file(out).items()}, "test")
