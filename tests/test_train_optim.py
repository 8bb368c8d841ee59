"""Optimizer groups, lr schedule, EMA, clipping and bias-table resizing: bevt's clean choices and
the released BEVT recipes (mmcv 1.3 behaviour, re-implemented here independently of the code)."""

import math
import types

import pytest
import torch
from torch import nn

from bevt.config import OptimConfig, load_config
from bevt.models import create_model
from bevt.models.build import build_model
from bevt.models.convert import resize_bias_table
from bevt.train.logging import StepTimer
from bevt.train.loop import train_step
from bevt.train.optim import (
    Schedule, build_ema, build_optimizer, lr_factor, param_groups, set_lr, swin_layer_id,
)
from bevt.train.tasks import FinetuneTask

DEPTHS = (2, 2, 2, 2)
CLEAN = dict(param_groups="clean")


def _groups_by_param(model, cfg, depths=DEPTHS):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in param_groups(model, cfg, depths) for p in group["params"]}


# ----------------------------------------------------------------------------------------------
# clean grouping
# ----------------------------------------------------------------------------------------------


def test_no_weight_decay_on_norms_biases_tables_and_mask_token():
    model = create_model("debug", num_classes=5)
    groups = _groups_by_param(model, OptimConfig(weight_decay=0.05, **CLEAN))
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
    groups = _groups_by_param(model, OptimConfig(layer_decay=0.5, backbone_lr_scale=0.1, **CLEAN))
    assert groups["head.weight"]["lr_scale"] == 1.0
    assert groups["encoder.norm.weight"]["lr_scale"] == pytest.approx(0.1)
    assert groups["encoder.layers.3.blocks.1.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.1 * 0.5)
    assert groups["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.1 * 0.5**9)


def test_frozen_parameters_are_left_out():
    model = create_model("debug", num_classes=5)
    model.encoder.requires_grad_(False)
    for cfg in (OptimConfig(**CLEAN), OptimConfig(param_groups="official", custom_keys={"norm": {}})):
        kept = [p for group in param_groups(model, cfg, DEPTHS) for p in group["params"]]
        assert len(kept) == 2  # head weight and bias


# ----------------------------------------------------------------------------------------------
# official grouping: the released configs' custom_keys under mmcv's DefaultOptimizerConstructor
# ----------------------------------------------------------------------------------------------

NO_DECAY = {"absolute_pos_embed": (1.0, 0.0), "relative_position_bias_table": (1.0, 0.0), "norm": (1.0, 0.0)}


def released_k400_keys(decay=0.9):
    """configs/recognition/swin/swin_base_patch244_window877_bevt_finetune_k400.py: the final norm
    at decay^1 without weight decay, then every block and every merging layer one level deeper,
    from layers.3.blocks.1 (decay^1) down to the patch embedding (decay^28)."""
    keys = {**NO_DECAY, "backbone.norm": (decay, 0.0)}
    level = 1
    for stage, depth in ((3, 2), (2, 18), (1, 2), (0, 2)):
        if stage < 3:
            keys[f"backbone.layers.{stage}.downsample"] = (decay**level, 1.0)
            level += 1
        for block in range(depth - 1, -1, -1):
            keys[f"backbone.layers.{stage}.blocks.{block}"] = (decay**level, 1.0)
            level += 1
    keys["backbone.patch_embed"] = (decay**level, 1.0)
    assert level == 28
    return keys


RELEASED = {  # recipe -> (custom_keys as (lr_mult, decay_mult), base weight decay) of its released config
    "swin_b_finetune_k400": (released_k400_keys(), 1e-3),
    "swin_b_finetune_ssv2": ({**NO_DECAY, "backbone": (0.1, 1.0)}, 0.05),
    "swin_b_joint_in1k_k400": (dict(NO_DECAY), 0.05),
}

# Module paths of the released models (mmaction2 Recognizer3D / BEVTMultiSource): bevt module -> released module.
RELEASED_MODULES = {
    "encoder": "backbone",
    "head": "cls_head.fc_cls",
    "token_head": "cls_head.lm_head",
    "image_decoder.upsample": "backbone.fpn.0",
    "image_decoder.fuse": "backbone.lm_down",
    "video_decoder.upsample": "backbone.fpn_s.0",
    "video_decoder.fuse": "backbone.lm_down_st.0",
    "video_decoder.temporal_upsample": "backbone.fpn_t.0",
}


def released_parameter_name(name):
    module, rest = next((m, name[len(m) + 1 :]) for m in RELEASED_MODULES if name.startswith(m + "."))
    return f"{RELEASED_MODULES[module]}.{rest}"


def mmcv_rule(name, custom_keys, base_wd):
    """mmcv 1.3 DefaultOptimizerConstructor.add_params: of the keys that are substrings of the full
    parameter name, the longest decides (equal lengths: the alphabetically first); no match: x1.
    Returns (lr multiplier, weight decay)."""
    matches = [key for key in custom_keys if key in name]
    if not matches:
        return 1.0, base_wd
    lr_mult, decay_mult = custom_keys[min(matches, key=lambda key: (-len(key), key))]
    return lr_mult, base_wd * decay_mult


def _recipe_model(recipe):
    cfg = load_config(recipe)
    tokenizer = None
    if cfg.task == "pretrain":
        from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer

        with torch.device("meta"):
            tokenizer = DalleTokenizer(DalleEncoder())
    with torch.device("meta"):
        model = build_model(cfg, tokenizer=tokenizer)
    return cfg, model


@pytest.mark.parametrize("recipe", sorted(RELEASED))
def test_paper_recipes_group_parameters_as_released(recipe):
    custom_keys, base_wd = RELEASED[recipe]
    cfg, model = _recipe_model(recipe)
    assert cfg.optim.param_groups == "official" and cfg.optim.weight_decay == base_wd
    depths = tuple(len(stage.blocks) for stage in model.encoder.layers)
    groups = _groups_by_param(model, cfg.optim, depths)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable
    for name in trainable:
        lr_mult, weight_decay = mmcv_rule(released_parameter_name(name), custom_keys, base_wd)
        got = groups[name]
        assert got["lr_scale"] == pytest.approx(lr_mult, rel=1e-9), name
        assert got["weight_decay"] == pytest.approx(weight_decay, rel=1e-9, abs=0), name


def test_released_groups_have_the_reviewed_consequences():
    """The facts the release review found, written out (each follows from the rule above)."""
    _, model = _recipe_model("swin_b_finetune_k400")
    k400 = _groups_by_param(model, load_config("swin_b_finetune_k400").optim, (2, 2, 18, 2))
    lr_wd = {name: (g["lr_scale"], g["weight_decay"]) for name, g in k400.items()}
    assert lr_wd["encoder.patch_embed.proj.weight"] == pytest.approx((0.9**28, 1e-3))
    assert lr_wd["encoder.patch_embed.norm.weight"] == pytest.approx((0.9**28, 1e-3))  # norm decayed
    assert lr_wd["encoder.layers.0.blocks.0.norm1.weight"] == pytest.approx((0.9**27, 1e-3))
    assert lr_wd["encoder.layers.0.downsample.reduction.weight"] == pytest.approx((0.9**25, 1e-3))
    assert lr_wd["encoder.layers.2.blocks.1.mlp.fc1.bias"] == pytest.approx((0.9**20, 1e-3))
    assert lr_wd["encoder.layers.2.blocks.10.mlp.fc1.bias"] == pytest.approx((0.9**11, 1e-3))  # not blocks.1's
    assert lr_wd["encoder.layers.0.blocks.0.attn.relative_position_bias_table"] == (1.0, 0.0)
    assert lr_wd["encoder.norm.weight"] == pytest.approx((0.9, 0.0))
    assert lr_wd["head.bias"] == pytest.approx((1.0, 1e-3))
    assert len({round(lr, 12) for lr, _ in lr_wd.values()}) == 28 + 1  # 28 levels (the final norm's 0.9 is level 1), x1

    _, model = _recipe_model("swin_b_finetune_ssv2")
    ssv2 = _groups_by_param(model, load_config("swin_b_finetune_ssv2").optim, (2, 2, 18, 2))
    assert (ssv2["encoder.layers.1.blocks.0.attn.relative_position_bias_table"]["lr_scale"],
            ssv2["encoder.layers.1.blocks.0.attn.relative_position_bias_table"]["weight_decay"]) == (1.0, 0.0)
    assert ssv2["encoder.layers.1.blocks.0.norm2.weight"]["weight_decay"] == 0.05
    assert ssv2["encoder.norm.bias"]["lr_scale"] == pytest.approx(0.1)

    _, model = _recipe_model("swin_b_joint_in1k_k400")
    joint = _groups_by_param(model, load_config("swin_b_joint_in1k_k400").optim, (2, 2, 18, 2))
    for decayed in ("encoder.mask_token", "encoder.layers.0.blocks.0.attn.qkv.bias", "token_head.bias",
                    "video_decoder.fuse.bias"):
        assert joint[decayed]["weight_decay"] == 0.05, decayed
    for exempt in ("encoder.patch_embed_2d.norm.bias", "encoder.layers.3.blocks.1.attn.relative_position_bias_table"):
        assert joint[exempt]["weight_decay"] == 0.0, exempt


def test_official_keys_for_another_depth_are_reported(caplog):
    _, model = _recipe_model("swin_b_finetune_k400")
    del model.encoder.layers[2].blocks[6:]  # a Swin-T-like stage 3 with the Swin-B keys
    param_groups(model, load_config("swin_b_finetune_k400").optim, (2, 2, 6, 2))
    assert "backbone.layers.2.blocks.17" in caplog.text and "backbone.layers.2.blocks.5" not in caplog.text


def test_official_without_keys_is_a_config_error():
    from bevt.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.param_groups='official'.*custom_keys"):
        load_config("tiny_finetune", ["optim.param_groups=official"])
    with pytest.raises(ConfigError, match="lr_mult"):
        load_config("tiny_finetune", ["optim.param_groups=official", "optim.custom_keys={norm: {lr_mult: -1}}"])
    cfg = load_config("tiny_finetune", ["optim.param_groups=official", "optim.custom_keys.norm.decay_mult=0"])
    assert cfg.optim.custom_keys["norm"].decay_mult == 0.0 and cfg.optim.custom_keys["norm"].lr_mult == 1.0


# ----------------------------------------------------------------------------------------------
# lr schedule
# ----------------------------------------------------------------------------------------------


def mmcv_lr_curve(base_lr, epochs, iters_per_epoch, warmup_epochs, warmup_ratio, by_epoch):
    """lr of every iteration under mmcv 1.3's CosineAnnealingLrUpdaterHook(min_lr=0,
    warmup='linear', warmup_by_epoch=True): regular lr = annealing_cos(base, 0, progress) with
    progress = epoch / max_epochs (by_epoch, set in before_train_epoch) or iter / max_iters; a
    warm-up iteration i < warmup_iters gets regular * (1 - (1 - i / warmup_iters) * (1 - ratio));
    by epoch, iteration == warmup_iters restores the regular lr and later ones keep what is set."""
    warmup_iters = warmup_epochs * iters_per_epoch
    max_iters = epochs * iters_per_epoch
    lrs, current, regular = [], None, None
    for epoch in range(epochs):
        if by_epoch:
            regular = current = 0.5 * base_lr * (math.cos(math.pi * epoch / epochs) + 1)
        for i in range(iters_per_epoch):
            it = epoch * iters_per_epoch + i
            if not by_epoch:
                regular = 0.5 * base_lr * (math.cos(math.pi * it / max_iters) + 1)
                current = regular
            if it < warmup_iters:
                current = regular * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))
            elif it == warmup_iters:
                current = regular
            lrs.append(current)
    return lrs


@pytest.mark.parametrize("recipe, by_epoch", [("swin_b_finetune_k400", True), ("swin_b_finetune_ssv2", True),
                                              ("swin_b_joint_in1k_k400", False)])
def test_paper_recipes_follow_the_released_lr_curve(recipe, by_epoch):
    cfg = load_config(recipe, ["optim.epochs=12", "optim.warmup_epochs=2"]).optim
    assert cfg.lr_by_epoch is by_epoch
    schedule = Schedule.from_epochs(batches_per_epoch=7, accum_steps=1, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs)
    expected = mmcv_lr_curve(cfg.lr, 12, 7, 2, 0.1, by_epoch)
    optimizer = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": 0.25}])
    for step, lr in enumerate(expected):
        assert set_lr(optimizer, step, cfg, schedule) == pytest.approx(lr, rel=1e-12), step
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * lr, rel=1e-12)
    assert expected[0] == pytest.approx(0.1 * cfg.lr)  # warm-up starts at 0.1 x lr


def test_released_schedule_at_chosen_steps():
    """60 epochs of 100 steps, 2.5 warm-up epochs, lr 1: values worked out by hand."""
    cfg = OptimConfig(lr=1.0, epochs=60, warmup_epochs=2.5, warmup_ratio=0.1, cosine_over="whole_run", lr_by_epoch=True)
    schedule = Schedule.from_epochs(100, 1, 60, 2.5)
    cos_epoch = lambda e: 0.5 * (1 + math.cos(math.pi * e / 60))  # noqa: E731
    assert lr_factor(0, cfg, schedule) == pytest.approx(0.1)
    assert lr_factor(125, cfg, schedule) == pytest.approx(cos_epoch(1) * (1 - 0.9 * 0.5))
    assert lr_factor(249, cfg, schedule) == pytest.approx(cos_epoch(2) * (1 - 0.9 / 250))
    assert lr_factor(250, cfg, schedule) == pytest.approx(cos_epoch(2))
    assert lr_factor(299, cfg, schedule) == lr_factor(250, cfg, schedule)  # constant within an epoch
    assert lr_factor(5999, cfg, schedule) == pytest.approx(cos_epoch(59))
    per_step = OptimConfig(lr=1.0, warmup_ratio=0.1, cosine_over="whole_run")
    assert lr_factor(3000, per_step, schedule) == pytest.approx(0.5)  # half-way through the whole run


def test_clean_schedule_warms_up_from_zero_then_cosine():
    cfg = OptimConfig(lr=1.0, min_lr=0.0)
    schedule = Schedule(steps_per_epoch=10, total_steps=110, warmup_steps=10)
    assert lr_factor(0, cfg, schedule) == 0.0
    assert lr_factor(5, cfg, schedule) == pytest.approx(0.5)
    assert lr_factor(10, cfg, schedule) == pytest.approx(1.0)
    assert lr_factor(60, cfg, schedule) == pytest.approx(0.5)
    assert lr_factor(35, cfg, schedule) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, OptimConfig(lr=1.0, min_lr=0.1), schedule) == pytest.approx(0.1)


def test_set_lr_applies_group_scales():
    model = create_model("debug", num_classes=5)
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5)
    optimizer = build_optimizer(model, cfg, DEPTHS)
    lr = set_lr(optimizer, step=5, cfg=cfg, schedule=Schedule(10, 100, 10))
    assert lr == pytest.approx(5e-4)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(5e-4 * group["lr_scale"])


# ----------------------------------------------------------------------------------------------
# EMA, gradient clipping, bias-table resizing
# ----------------------------------------------------------------------------------------------


def test_ssv2_ema_retention_reaches_the_ema():
    """mmcv EMAHook: momentum 2e-4 per iteration; the release accumulates 8 iterations per
    optimizer step, so the weights seen by 8 EMA updates are those of one optimizer step."""
    cfg = load_config("swin_b_finetune_ssv2").optim
    assert cfg.ema and cfg.ema_decay == pytest.approx((1 - 2e-4) ** 8, abs=1e-8)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = build_ema(model, cfg)
    assert ema.decay == cfg.ema_decay
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=10)
    expected = cfg.ema_decay * start + (1 - cfg.ema_decay) * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert build_ema(model, load_config("swin_b_finetune_k400").optim) is None


class _OneBatch:
    """The task interface of the loop, for a linear model whose loss has a huge gradient."""

    def next_batch(self):
        return {"x": torch.ones(4, 3)}

    def add_targets(self, model, batch):
        return batch

    def forward(self, model, batch):
        return {"loss": 1e4 * model(batch["x"]).sum()}

    def count(self, batch):
        return {}


def test_recipe_clip_reaches_the_optimizer_step():
    assert load_config("swin_b_finetune_k400").optim.clip_grad == 40.0
    assert load_config("swin_b_finetune_ssv2").optim.clip_grad is None
    assert load_config("swin_b_joint_in1k_k400").optim.clip_grad == 3.0
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    metrics = train_step(model, _OneBatch(), optimizer, scaler, "fp32", torch.device("cpu"), accum_steps=1,
                         clip_grad=40.0, timer=StepTimer(torch.device("cpu")))
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(metrics["grad_norm"]) > 1000  # the norm before clipping
    assert float(step.norm()) == pytest.approx(40.0, rel=1e-5)


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_fused_adamw_applies_the_clip_in_its_update(fp16_scaler):
    """With a fused AdamW the clip scale rides in the optimizer's kernel (grad_scale): the step
    equals clip_grad_norm_ then the step, and no scale is left on the optimizer. eps=1 makes the
    update depend on the gradients' scale (Adam's first step is otherwise scale-free)."""
    torch.manual_seed(0)
    model, reference = nn.Linear(3, 2), nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, eps=1.0, fused=True)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1.0, eps=1.0, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=fp16_scaler, init_scale=1024.0)
    metrics = train_step(model, _OneBatch(), optimizer, scaler, "fp32", torch.device("cpu"), accum_steps=1,
                         clip_grad=40.0, timer=StepTimer(torch.device("cpu")))
    _OneBatch().forward(reference, _OneBatch().next_batch())["loss"].backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 40.0)
    reference_optimizer.step()
    assert float(metrics["grad_norm"]) == pytest.approx(float(norm), rel=1e-6) and float(norm) > 1000
    for ours, expected in zip(model.parameters(), reference.parameters()):
        assert (ours - expected).abs().max() < 1e-6
    assert not hasattr(optimizer, "grad_scale") and not hasattr(optimizer, "found_inf")


@pytest.mark.parametrize("first_step", [0, 7])
def test_long_cpu_runs_back_their_heap_with_huge_pages_after_their_first_step(monkeypatch, first_step):
    """Once, right after the first step of the run or of its resumption (the heap then holds a
    step's buffers), and only when enough steps are left to repay the collapse."""
    from bevt.train import loop

    cfg = load_config("tiny_joint", ["optim.clip_grad=null", "run.checkpoint_every=1000000"])
    for steps_left, expected in ((loop.HUGE_PAGES_MIN_STEPS, [first_step + 1]), (loop.HUGE_PAGES_MIN_STEPS - 1, [])):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.SGD([{"params": model.parameters(), "lr_scale": 1.0}], lr=1e-9)
        state = {"step": first_step}
        advised_at = []
        monkeypatch.setattr(loop, "back_heap_with_huge_pages", lambda: advised_at.append(state["step"]))
        total = first_step + 1 + steps_left
        env = types.SimpleNamespace(device=torch.device("cpu"), world_size=1)
        logger = types.SimpleNamespace(advance=lambda: None, log=lambda step, values: None)
        assert loop.train(cfg, _OneBatch(), model, optimizer, torch.amp.GradScaler("cpu", enabled=False), None,
                          Schedule(total, total, 0), state, env, logger, save_checkpoint=lambda: None)
        assert state["step"] == total and advised_at == expected


def _aligned_false_resize(table, new_offsets):
    """Linear resize along the temporal offsets, PyTorch's align_corners=False convention: output
    row r reads input position (r + 0.5) * in / out - 0.5, clamped at 0."""
    old = table.shape[0]
    rows = []
    for r in range(new_offsets):
        pos = max(0.0, (r + 0.5) * old / new_offsets - 0.5)
        low = min(int(pos), old - 1)
        high = min(low + 1, old - 1)
        rows.append(table[low] * (1 - (pos - low)) + table[high] * (pos - low))
    return torch.stack(rows)


@pytest.mark.parametrize("align_corners", [False, True])
def test_finetuning_resizes_bias_tables_as_configured(align_corners):
    """A window-2 checkpoint finetuned with window 4 (3 -> 7 temporal offsets, like SSv2's 15 -> 31)."""
    torch.manual_seed(0)
    pretrained = create_model("debug", num_classes=5)
    state = pretrained.state_dict()
    cfg = load_config("tiny_finetune", [f"finetune.bias_table_align_corners={str(align_corners).lower()}",
                                        "model.window_size=[4, 4, 4]", "run.init_from=x"])
    model = create_model("debug", num_classes=6, window_size=(4, 4, 4))
    task = FinetuneTask(cfg, types.SimpleNamespace(batches_per_epoch=1), None, torch.device("cpu"))
    task.init_weights(model, state, None)
    key = "encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    old = state[key].view(3, 49, -1)
    new = model.state_dict()[key].view(7, 49, -1)
    if align_corners:  # offsets -1, 0, +1 land on -3, 0, +3
        torch.testing.assert_close(new[[0, 3, 6]], old)
    else:
        torch.testing.assert_close(new, _aligned_false_resize(old, 7))
        aligned = resize_bias_table(state[key], (4, 4, 4), align_corners=True).view(7, 49, -1)
        assert not torch.allclose(new[[1, 2, 4, 5]], aligned[[1, 2, 4, 5]])  # only the ends and the centre agree
    torch.testing.assert_close(model.state_dict()[key], resize_bias_table(state[key], (4, 4, 4), align_corners))
