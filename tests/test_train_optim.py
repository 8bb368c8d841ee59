"""Optimizer groups (weight decay, layer-wise lr decay) and the warm-up + cosine schedule."""

import math

import pytest

from bevt.config import OptimConfig
from bevt.models import create_model
from bevt.train.optim import build_optimizer, param_groups, set_lr, swin_layer_id, warmup_cosine

DEPTHS = (2, 2, 2, 2)


def _groups_by_param(model, cfg):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in param_groups(model, cfg, DEPTHS) for p in group["params"]}


def test_no_weight_decay_on_norms_biases_tables_and_mask_token():
    model = create_model("debug", num_classes=5)
    groups = _groups_by_param(model, OptimConfig(weight_decay=0.05))
    assert len(groups) == sum(1 for _ in model.parameters())
    for name, group in groups.items():
        no_decay = (
            name.endswith(".bias") or ".norm" in name or "relative_position_bias_table" in name or "mask_token" in name
        )
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert groups["encoder.layers.0.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05


def test_layer_ids_follow_depth():
    assert swin_layer_id("encoder.patch_embed.proj.weight", DEPTHS) == 0
    assert swin_layer_id("encoder.mask_token", DEPTHS) == 0
    assert swin_layer_id("encoder.layers.0.blocks.0.attn.qkv.weight", DEPTHS) == 1
    assert swin_layer_id("encoder.layers.0.downsample.reduction.weight", DEPTHS) == 2  # with the stage's last block
    assert swin_layer_id("encoder.layers.2.blocks.1.mlp.fc1.weight", DEPTHS) == 6
    assert swin_layer_id("encoder.norm.weight", DEPTHS) == 9
    assert swin_layer_id("head.weight", DEPTHS) == 9


def test_layer_decay_and_backbone_scale():
    model = create_model("debug", num_classes=5)
    groups = _groups_by_param(model, OptimConfig(layer_decay=0.5, backbone_lr_scale=0.1))
    assert groups["head.weight"]["lr_scale"] == 1.0
    assert groups["encoder.norm.weight"]["lr_scale"] == pytest.approx(0.1)
    assert groups["encoder.layers.3.blocks.1.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.1 * 0.5)
    assert groups["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.1 * 0.5**9)


def test_frozen_parameters_are_left_out():
    model = create_model("debug", num_classes=5)
    model.encoder.requires_grad_(False)
    kept = [p for group in param_groups(model, OptimConfig(), DEPTHS) for p in group["params"]]
    assert len(kept) == 2  # head weight and bias


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110, 0.0) == 0.0
    assert warmup_cosine(5, 10, 110, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 110, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, 10, 110, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_set_lr_applies_group_scales():
    model = create_model("debug", num_classes=5)
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5)
    optimizer = build_optimizer(model, cfg, DEPTHS)
    lr = set_lr(optimizer, step=5, cfg=cfg, warmup_steps=10, total_steps=100)
    assert lr == pytest.approx(5e-4)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(5e-4 * group["lr_scale"])
