"""Config: recipes load, overrides are typed, and every bad input fails early naming its key."""

import pytest

from bevt.cli import main
from bevt.config import config_from_dict, config_to_dict, load_config, recipe_names
from bevt.errors import ConfigError

PAPER_RECIPES = [name for name in recipe_names() if name.startswith("swin_")]
TINY_RECIPES = [name for name in recipe_names() if name.startswith("tiny_")]


def test_recipes_are_shipped():
    assert TINY_RECIPES == ["tiny_finetune", "tiny_image", "tiny_joint", "tiny_tokenizer", "tiny_video"]
    assert "tokenizer_vq" in recipe_names()
    assert len(PAPER_RECIPES) == 10  # stage 1, stage 2, BEVT-V, 3 finetunings, 4 Table-8 strategies


@pytest.mark.parametrize("name", PAPER_RECIPES + TINY_RECIPES + ["tokenizer_vq"])
def test_recipe_round_trips(name):
    cfg = load_config(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.run.out  # defaults to runs/<recipe>


def test_paper_values():
    joint = load_config("swin_b_joint_in1k_k400")
    assert (joint.optim.lr, joint.optim.weight_decay, joint.optim.clip_grad, joint.model.drop_path_rate) == (5e-4, 0.05, 3.0, 0.3)
    assert (joint.optim.epochs, joint.optim.warmup_epochs, joint.data.frames, joint.data.interval) == (150, 10, 16, 8)
    ssv2 = load_config("swin_b_finetune_ssv2")
    assert ssv2.model.window_size == (16, 7, 7) and ssv2.optim.backbone_lr_scale == 0.1 and ssv2.optim.ema
    assert (ssv2.data.randaugment, ssv2.data.random_erasing, ssv2.finetune.label_smoothing) == ((4, 7), 0.25, 0.1)
    assert load_config("swin_t_table8_random3d").masking.video == "random3d"


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("tiny_joint", ["optim.lr=1e-4", "model.window_size=[2, 4, 4]", "optim.clip_grad=null", "run.out=x/y"])
    assert cfg.optim.lr == 1e-4 and cfg.model.window_size == (2, 4, 4)
    assert cfg.optim.clip_grad is None and cfg.run.out == "x/y"


@pytest.mark.parametrize(
    "override, message",
    [
        ("masking.ratio=1.5", "masking.ratio=1.5: must be in (0, 1)"),
        ("optim.lrr=1", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("optimm.lr=1", "unknown key 'optimm' (did you mean 'optim'?)"),
        ("run.precision=bf17", "run.precision='bf17': choose one of bf16, fp16, fp32 (did you mean 'bf16'?)"),
        ("model.name=swin_x", "model.name='swin_x': unknown flavor"),
        ("optim.lr=fast", "optim.lr='fast': expected float"),
        ("data.size=100", "data.size=100: must be a multiple of 32"),
        ("data.crop_scale=[0.5, 0.2]", "data.crop_scale=(0.5, 0.2): must be (low, high) with 0 < low <= high <= 1"),
        ("data.train=null", "data.train: is required for pretraining with streams=joint"),
        ("model.window_size=[8, 7]", "model.window_size=[8, 7]: expected a list of 3 values"),
        ("optim", "override 'optim': expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny_joint", [override])
    assert message in str(err.value)


def test_mixup_needs_even_batches():
    with pytest.raises(ConfigError, match="data.video_batch_size: must be even with mixup"):
        load_config("tiny_finetune", ["finetune.mixup=0.8", "data.video_batch_size=3"])


def test_unknown_recipe_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'tiny_joint'"):
        load_config("tiny_jiont")


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["pretrain", "--config", "tiny_joint", "masking.ratio=1.5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bevt pretrain: error: masking.ratio=1.5") and "\n" not in err


def test_verb_must_match_the_recipe(capsys):
    assert main(["finetune", "--config", "tiny_joint", "--dry-run"]) == 2
    assert "run `bevt pretrain --config tiny_joint`" in capsys.readouterr().err


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_dry_run(name, capsys, tmp_path, monkeypatch):
    """Everything but the data validates; the absent datasets fail with exit 2 naming each path."""
    monkeypatch.chdir(tmp_path)  # the recipes' relative data paths do not exist here
    cfg = load_config(name)
    verb = cfg.task
    assert main([verb, "--config", name, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "M trainable parameters" in captured.out
    error = captured.err.strip()
    assert "\n" not in error and "Traceback" not in error
    assert error.startswith(f"bevt {verb}: error: dry run: config, model and optimizer are valid")
    assert f"data.train={cfg.data.train}" in error or f"data.images={cfg.data.images}" in error
