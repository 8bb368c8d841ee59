"""Checkpoint conversion: torchvision, official Video Swin / BEVT, 2D inflation, bias tables, errors."""

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
    from_torchvision,
    inflate_image_checkpoint,
    inflate_patch_embed,
    load_checkpoint_file,
    resize_bias_table,
)
from bevt.errors import CheckpointError
from bevt.models import create_model

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
