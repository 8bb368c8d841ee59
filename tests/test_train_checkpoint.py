"""Checkpoints: atomic layout, resume discovery, plain train state, RNG round trip, model loading."""

import random

import numpy as np
import pytest
import torch

from bevt.config import load_config
from bevt.errors import CheckpointError, ConfigError
from bevt import checkpoint as ckpt
from bevt.train.main import train
from bevt.models.build import build_model, load_model_from_checkpoint


@pytest.fixture
def finetune_cfg(tmp_path):
    return load_config("tiny_finetune", [f"run.out={tmp_path}/run"])


def _save(cfg, step, model, keep=2):
    train_state = {"step": step, "rng": ckpt.rng_state(), "nested": {"positions": [1, 2]}}
    return ckpt.save_checkpoint(cfg.run.out, step, cfg, model.state_dict(), train_state,
                                class_names=["a", "b", "c", "d", "e", "f"], keep=keep)


def test_layout_resume_auto_and_pruning(finetune_cfg):
    model = build_model(finetune_cfg)
    for step in (10, 20, 30):
        path = _save(finetune_cfg, step, model)
    assert path.name == "step_0000030"
    assert sorted(p.name for p in path.iterdir()) == ["classes.json", "config.yaml", "model.safetensors", "train_state.pt"]
    assert [p.name for p in ckpt.complete_checkpoints(finetune_cfg.run.out)] == ["step_0000020", "step_0000030"]
    # a half-written checkpoint (a .tmp directory) is never picked
    (path.parent / "step_0000040.tmp").mkdir()
    assert ckpt.resume_checkpoint("auto", finetune_cfg.run.out) == path
    assert ckpt.resume_checkpoint(None, finetune_cfg.run.out) is None
    assert ckpt.resolve_checkpoint(finetune_cfg.run.out) == path  # a run directory means its newest checkpoint


def test_resume_auto_on_a_fresh_run_starts_over(tmp_path):
    assert ckpt.resume_checkpoint("auto", tmp_path / "nothing") is None


def test_a_fresh_run_refuses_a_run_directory_with_checkpoints(finetune_cfg):
    """Starting over in an earlier run's directory once pruned the new final checkpoint in favour
    of the earlier run's higher step, and the run ended on a missing checkpoint."""
    _save(finetune_cfg, 576, build_model(finetune_cfg))
    with pytest.raises(ConfigError, match="step_0000576.*--resume auto"):
        train(finetune_cfg)


def test_train_state_is_plain_and_rng_round_trips(finetune_cfg):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = _save(finetune_cfg, 1, build_model(finetune_cfg))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = ckpt.read_train_state(path)  # weights_only=True: plain types only
    assert state["nested"] == {"positions": [1, 2]}
    ckpt.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_load_model_from_checkpoint(finetune_cfg):
    model = build_model(finetune_cfg)
    path = _save(finetune_cfg, 5, model)
    loaded, cfg = load_model_from_checkpoint(path)
    assert cfg == finetune_cfg and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert ckpt.read_class_names(path) == ["a", "b", "c", "d", "e", "f"]


def test_mismatched_or_missing_checkpoints_are_clear(finetune_cfg, tmp_path):
    model = build_model(finetune_cfg)
    with pytest.raises(CheckpointError, match="missing keys: head.weight"):
        ckpt.load_strict(model, {k: v for k, v in model.state_dict().items() if k != "head.weight"}, "x")
    with pytest.raises(CheckpointError, match="nowhere does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        ckpt.resolve_checkpoint(tmp_path)
