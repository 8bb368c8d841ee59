"""The catalogue of user mistakes: each ends in one line naming the culprit and a non-zero exit,
with no traceback (only `-v` adds one). Runs `bevt.cli.main` in-process; the few cases that need
weights use an untrained debug model saved as a checkpoint, never a training run."""

import json
import logging
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import bevt.cli
from bevt import checkpoint as ckpt
from bevt.cli import main
from bevt.config import config_from_dict, load_config
from bevt.data.datasets import SkipCounter
from bevt.data.synthetic import write_h264
from bevt.errors import CheckpointError, ConfigError
from bevt.eval.classify import evaluation_config
from bevt.models import create_model
from bevt.models.build import build_model
from bevt.tokenizers.base import tokenizer_fingerprint
from bevt.tokenizers.vq import VQTokenizer
from bevt.train.main import _check_resumed_config
from bevt.train.tasks import BatchStream

CLASSES = ["a", "b", "c", "d", "e", "f"]


def run(capsys, *argv):
    """-> (exit code, stderr) of `bevt ARGV`; argparse errors exit through SystemExit."""
    try:
        code = main(list(map(str, argv)))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str) -> str:
    """The error line of stderr, after checking it is the only one and no traceback was printed."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if " error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def garbage(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def finetuned(tmp_path):
    """An untrained debug classifier saved as a finetuning checkpoint, with its config's val list."""
    torch.manual_seed(0)
    cfg = load_config("tiny_finetune", [f"run.out={tmp_path}/run", "data.val=val.txt", "eval.clips=1"])
    path = ckpt.save_checkpoint(cfg.run.out, 4, cfg, build_model(cfg).state_dict(), {"step": 4}, class_names=CLASSES)
    return path


@pytest.fixture
def tokenizer_dir(tmp_path):
    torch.manual_seed(0)
    return VQTokenizer(width=8, codebook_size=32).save(tmp_path / "tokenizer").parent


# ----------------------------------------------------------------------------------------------
# Arguments and recipes
# ----------------------------------------------------------------------------------------------


BAD_ARGUMENTS = [
    (["tokenizer", "train", "--images", "x", "--out", "y", "optim.epochs=0"], "optim.epochs=0.0: must be > 0"),
    (["predict", "v.mp4", "--checkpoint", "c", "--top-k", "-1"], "argument --top-k: must be >= 1, got -1"),
    (["tokenizer", "train", "--images", "x", "--out", "y", "optim.lr=-1"], "optim.lr=-1.0: must be > 0"),
    (["info", "debug", "--frames", "zero"], "argument --frames: expected an integer, got 'zero'"),
    (["finetune", "--config", "tiny_finetune", "--resume"], "argument --resume: expected one argument"),
    (["finetune", "--config", "tiny_finetune", "--bogus"], "unrecognized arguments: --bogus"),
]
BAD_RECIPES_AND_OVERRIDES = [
    (["pretrain", "--config", "tiny_imge"], "no config file 'tiny_imge' and no shipped recipe of that name (did you mean 'tiny_image'?)"),
    (["pretrain", "--config", "tiny_finetune"], "tiny_finetune is a finetune recipe; run `bevt finetune --config tiny_finetune`"),
    (["pretrain", "--config", "tiny_image", "optim.lrr=1"], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["pretrain", "--config", "tiny_image", "optim.lr=fast"], "optim.lr='fast': expected float"),
    (["pretrain", "--config", "tiny_image", "optim.lr"], "override 'optim.lr': expected key=value"),
    (["finetune", "--config", "tiny_finetune", "optim.epochs=0"], "optim.epochs=0.0: must be > 0"),
    (["config", "show", "tiny_finetune", "model.name=swin_x"], "model.name='swin_x': unknown flavor"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS + BAD_RECIPES_AND_OVERRIDES)
def test_bad_arguments_recipes_and_overrides(capsys, argv, message):
    code, err = run(capsys, *argv)
    assert code == 2 and message in one_line_error(err)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json"])
def test_a_garbage_annotation_file(capsys, tmp_path, garbage, suffix):
    listing = tmp_path / f"train{suffix}"
    listing.write_bytes(garbage.read_bytes())
    code, err = run(capsys, "data", "check", listing)
    assert code == 2 and f"{listing} (or its class-name file) is not UTF-8 text" in one_line_error(err)


def test_a_garbage_recipe_file(capsys, garbage):
    code, err = run(capsys, "pretrain", "--config", garbage)
    assert code == 2 and f"{garbage}: not a YAML recipe" in one_line_error(err)


def test_overrides_may_follow_options(capsys, tmp_path):
    """`--resume auto optim.lr=...` once ended in 'unrecognized arguments'."""
    code, err = run(capsys, "finetune", "--config", "tiny_finetune", "--resume", "auto", "optim.lrr=1")
    assert code == 2 and "unknown key 'optim.lrr'" in one_line_error(err)


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, message", [
    ("json_garbage", "tokenizer.json is malformed: UnicodeDecodeError"),
    ("weights_garbage", "tokenizer.safetensors: cannot read weights: Error while deserializing header"),
    ("weights_truncated", "tokenizer.safetensors: cannot read weights"),
])
def test_a_corrupt_tokenizer(capsys, tmp_path, tokenizer_dir, garbage, damage, message):
    if damage == "json_garbage":
        (tokenizer_dir / "tokenizer.json").write_bytes(garbage.read_bytes())
    elif damage == "weights_garbage":
        (tokenizer_dir / "tokenizer.safetensors").write_bytes(garbage.read_bytes())
    else:
        weights = tokenizer_dir / "tokenizer.safetensors"
        weights.write_bytes(weights.read_bytes()[:500])
    code, err = run(capsys, "pretrain", "--config", "tiny_image", f"tokenizer.path={tokenizer_dir}",
                    f"run.out={tmp_path}/run", "--dry-run")
    assert code == 2 and message in one_line_error(err)


def test_import_dalle_of_garbage(capsys, tmp_path, garbage):
    code, err = run(capsys, "tokenizer", "import-dalle", garbage, "--out", tmp_path / "dalle", "--trust-pickle")
    line = one_line_error(err)
    assert code == 2 and f"{garbage}: cannot unpickle it" in line and "DALL-E release" in line


def test_import_dalle_of_a_pickle_of_something_else(capsys, tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pkl")
    code, err = run(capsys, "tokenizer", "import-dalle", tmp_path / "list.pkl", "--out", tmp_path / "dalle", "--trust-pickle")
    assert code == 2 and "list.pkl holds a list, not the DALL-E encoder or decoder" in one_line_error(err)


def test_tokenizer_train_refuses_to_overwrite(capsys, tokenizer_dir):
    before = (tokenizer_dir / "tokenizer.safetensors").read_bytes()
    code, err = run(capsys, "tokenizer", "train", "--images", tokenizer_dir, "--out", tokenizer_dir)
    assert code == 2 and f"--out {tokenizer_dir} already holds a tokenizer" in one_line_error(err)
    assert "--force" in err and (tokenizer_dir / "tokenizer.safetensors").read_bytes() == before


def test_tokenizer_fingerprint_follows_the_content_not_the_folder(tmp_path, tokenizer_dir):
    moved = tmp_path / "moved"
    moved.mkdir()
    for file in tokenizer_dir.iterdir():
        (moved / file.name).write_bytes(file.read_bytes())
    assert tokenizer_fingerprint(moved) == tokenizer_fingerprint(tokenizer_dir)
    torch.manual_seed(1)
    VQTokenizer(width=8, codebook_size=32).save(moved)  # retrained in place
    assert tokenizer_fingerprint(moved) != tokenizer_fingerprint(tokenizer_dir)


# ----------------------------------------------------------------------------------------------
# Checkpoints: convert, resume, evaluate, predict
# ----------------------------------------------------------------------------------------------


def test_convert_a_pickled_model(capsys, tmp_path):
    torch.save(create_model("debug"), tmp_path / "model.pth")
    code, err = run(capsys, "convert", "--from", "official", tmp_path / "model.pth", tmp_path / "out.safetensors")
    line = one_line_error(err)
    assert code == 2 and "it pickles Python objects (bevt.models.video_swin.VideoSwinEncoder)" in line
    assert "state_dict" in line and not (tmp_path / "out.safetensors").exists()


def test_convert_garbage(capsys, tmp_path, garbage):
    code, err = run(capsys, "convert", "--from", "official", garbage, tmp_path / "out.safetensors")
    assert code == 2 and f"cannot read {garbage}: not a PyTorch checkpoint" in one_line_error(err)


def _checkpoints(tmp_path, steps=(1, 2)):
    cfg = load_config("tiny_finetune", [f"run.out={tmp_path}/run"])
    model = build_model(cfg)
    for step in steps:
        ckpt.save_checkpoint(cfg.run.out, step, cfg, model.state_dict(), {"step": step}, keep=5)
    return cfg.run.out


@pytest.mark.parametrize("damage, reason", [
    ("train_state_garbage", "train_state.pt: truncated or not a PyTorch checkpoint"),
    ("train_state_truncated", "train_state.pt: truncated or not a PyTorch checkpoint"),
    ("model_truncated", "model.safetensors: "),
    ("config_garbage", "config.yaml: cannot read the checkpoint's config"),
])
def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path, garbage, caplog, damage, reason):
    run_dir = _checkpoints(tmp_path)
    newest = ckpt.checkpoint_dir(run_dir, 2)
    file = {"train_state_garbage": ckpt.TRAIN_STATE_FILE, "train_state_truncated": ckpt.TRAIN_STATE_FILE,
            "model_truncated": ckpt.MODEL_FILE, "config_garbage": ckpt.CONFIG_FILE}[damage]
    data = (newest / file).read_bytes()
    (newest / file).write_bytes(garbage.read_bytes() if "garbage" in damage else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume_checkpoint("auto", run_dir) == ckpt.checkpoint_dir(run_dir, 1)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"skipping {newest}" in warning and reason in warning
    with pytest.raises(CheckpointError, match=f"{file}"):  # named explicitly, it is not skipped
        if file == ckpt.MODEL_FILE:
            ckpt.read_weights(newest)
        elif file == ckpt.CONFIG_FILE:
            ckpt.read_config(newest)
        else:
            ckpt.read_train_state(newest)


def test_resume_auto_with_no_readable_checkpoint_fails(tmp_path, garbage):
    run_dir = _checkpoints(tmp_path, steps=(1,))
    (ckpt.checkpoint_dir(run_dir, 1) / ckpt.TRAIN_STATE_FILE).write_bytes(garbage.read_bytes())
    with pytest.raises(CheckpointError, match="no readable checkpoint .*step_0000001 \\(train_state.pt: truncated or not"):
        ckpt.resume_checkpoint("auto", run_dir)


def test_resume_refuses_another_class_count_and_names_other_changes(tmp_path, caplog):
    saved = load_config("tiny_finetune", [f"run.out={tmp_path}/run"])
    with pytest.raises(CheckpointError, match="finetune.num_classes=7: .* was trained with finetune.num_classes=6"):
        _check_resumed_config(saved, load_config("tiny_finetune", [f"run.out={tmp_path}/run", "finetune.num_classes=7"]),
                              tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING):
        _check_resumed_config(saved, load_config("tiny_finetune", [f"run.out={tmp_path}/run", "optim.epochs=8"]),
                              tmp_path / "ckpt")
    assert "changed settings: optim.epochs 4.0 -> 8.0" in caplog.text


def test_evaluate_uses_the_checkpoints_protocol(finetuned, tmp_path):
    cfg = evaluation_config(finetuned)
    assert (cfg.data.frames, cfg.data.val, cfg.eval.clips) == (8, "val.txt", 1)
    tmp_path.joinpath("recipe.yaml").write_text("eval:\n  crops: 3\n")
    cfg = evaluation_config(finetuned, str(tmp_path / "recipe.yaml"), ["eval.clips=2"])
    assert (cfg.data.frames, cfg.eval.crops, cfg.eval.clips) == (8, 3, 2)


def test_evaluate_checks_its_output_before_any_work(capsys, finetuned, tmp_path):
    (tmp_path / "file").write_text("")
    code, err = run(capsys, "evaluate", "--checkpoint", finetuned, "--out", tmp_path / "file")
    assert code == 2 and f"--out {tmp_path / 'file'}: exists and is not a folder" in one_line_error(err)
    code, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere'} does not exist" in one_line_error(err)


@pytest.mark.parametrize("argv, message", [
    (["visualize", "in.png", "--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    (["convert", "--from", "official", "in.pth", "{tmp}/file/out.safetensors"], "{tmp}/file is a file, not a folder"),
    (["synth", "--out", "{tmp}/file"], "--out {tmp}/file: exists and is not a folder"),
    (["finetune", "--config", "tiny_finetune", "run.out={tmp}/file/run", "run.init_from=null",
      "data.train={tmp}/file", "data.val=null", "data.labels=null"], "run.out={tmp}/file/run: {tmp}/file is a file"),
])
def test_unwritable_outputs_fail_first(capsys, tmp_path, argv, message):
    (tmp_path / "file").write_text("")
    code, err = run(capsys, *[arg.format(tmp=tmp_path) for arg in argv])
    assert code == 2 and message.format(tmp=tmp_path) in one_line_error(err)


def test_no_permission_to_write(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the tests may run as root
    code, err = run(capsys, "synth", "--out", tmp_path / "new")
    assert code == 2 and f"--out {tmp_path / 'new'}: no permission to write in {tmp_path}" in one_line_error(err)


def _video(path, seed):
    frames = np.random.default_rng(seed).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    write_h264(str(path), frames)


def test_predict_reports_bad_files_and_continues_and_reads_folders(capsys, tmp_path, finetuned, garbage):
    folder = tmp_path / "videos"
    folder.mkdir()
    _video(folder / "one.mp4", 0)
    _video(folder / "two.mp4", 1)
    broken = folder / "broken.mp4"
    broken.write_bytes(garbage.read_bytes())
    code = main(["predict", str(tmp_path / "missing.mp4"), str(folder), "--checkpoint", str(finetuned), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert f"cannot read {tmp_path / 'missing.mp4'}: missing" in err and f"cannot read {broken}: undecodable" in err
    assert out.count(str(folder)) == 2 and out.count("  2. ") == 2  # one.mp4 and two.mp4, two classes each

    (tmp_path / "empty").mkdir()
    code, err = run(capsys, "predict", tmp_path / "empty", "--checkpoint", finetuned)
    assert code == 2 and f"{tmp_path / 'empty'}: a folder without videos" in one_line_error(err)
    code, err = run(capsys, "predict", broken, "--checkpoint", finetuned)
    assert code == 2 and "none of the 1 videos could be read" in one_line_error(err)


# ----------------------------------------------------------------------------------------------
# The run directory lock
# ----------------------------------------------------------------------------------------------


def _write_lock(run_dir, **owner):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ckpt.LOCK_FILE).write_text(json.dumps(owner))


def test_the_lock_names_its_run_and_goes_with_it(tmp_path):
    run_dir = tmp_path / "run"
    with ckpt.RunLock(run_dir):
        owner = json.loads((run_dir / ckpt.LOCK_FILE).read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
    assert not (run_dir / ckpt.LOCK_FILE).exists()


def test_a_live_process_on_this_host_or_another_host_keeps_the_lock(capsys, tmp_path):
    run_dir = tmp_path / "run"
    _write_lock(run_dir, pid=os.getppid(), host=socket.gethostname(), job=None, started="earlier")
    code, err = run(capsys, "finetune", "--config", "tiny_finetune", f"run.out={run_dir}", "run.init_from=null",
                    f"data.train={tmp_path}", "data.val=null", "data.labels=null")
    assert code == 2 and (f"run.out={run_dir} is in use by another run (pid {os.getppid()} on "
                          f"{socket.gethostname()} since earlier)") in one_line_error(err)
    _write_lock(run_dir, pid=1, host="elsewhere", job=None, started="earlier")
    with pytest.raises(ConfigError, match=f"if that run is gone, delete {run_dir / ckpt.LOCK_FILE}"):
        ckpt.RunLock(run_dir).__enter__()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, caplog, monkeypatch):
    run_dir = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(run_dir, pid=int(gone.stdout), host=socket.gethostname(), job=None, started="earlier")
    with caplog.at_level(logging.WARNING), ckpt.RunLock(run_dir):
        assert f"pid {int(gone.stdout)} is not running" in caplog.text
    # a requeued job (same SLURM_JOB_ID) takes over its earlier attempt's lock from any host
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _write_lock(run_dir, pid=1, host="elsewhere", job="4242", started="earlier")
    with ckpt.RunLock(run_dir):
        pass


# ----------------------------------------------------------------------------------------------
# How the CLI turns exceptions into lines
# ----------------------------------------------------------------------------------------------


def test_os_errors_on_a_named_file_are_one_line_and_others_are_bugs(capsys, monkeypatch):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/videos/a.mp4")

    monkeypatch.setattr(bevt.cli, "_run_info", denied)
    code, err = run(capsys, "info", "debug")
    assert code == 1 and "bevt info: error: /data/videos/a.mp4: Permission denied" in one_line_error(err)

    code, err = run(capsys, "info", "debug", "-v")  # -v after the verb, as well as before it
    assert code == 1 and "Traceback" in err

    def bug(args):
        raise OSError("socket closed")  # names no file: not a user path, a bug

    monkeypatch.setattr(bevt.cli, "_run_info", bug)
    with pytest.raises(OSError, match="socket closed"):
        main(["info", "debug"])


def test_verbose_shows_the_traceback_of_a_usage_error(capsys):
    code, err = run(capsys, "-v", "pretrain", "--config", "tiny_imge")
    assert code == 2 and "Traceback" in err and "bevt pretrain: error: no config file 'tiny_imge'" in err


def test_help_does_not_import_torch():
    """`bevt --help` once took 5 s importing torch and timm."""
    script = "import sys, bevt.cli; bevt.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", script], check=True)


def test_config_show_prints_every_key_with_its_doc(capsys):
    assert main(["config", "show", "tiny_finetune", "optim.lr=2e-3"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.002  # peak learning rate after warm-up" in out
    assert config_from_dict(yaml.safe_load(out)) == load_config("tiny_finetune", ["optim.lr=2e-3"])
    assert main(["config", "list"]) == 0
    assert "tiny_finetune" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# The last epoch's skipped samples
# ----------------------------------------------------------------------------------------------


class _OneEpochLoader:
    """Two batches per epoch; the second skipped a file."""

    def __init__(self):
        self.sampler = SimpleNamespace(epoch=0)
        self.batches = [{"index": torch.tensor([0, 1]), "skipped": []},
                        {"index": torch.tensor([2]), "skipped": [("bad.mp4", "undecodable: test")]}]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        self.sampler.epoch = epoch


def test_the_last_epochs_skip_summary_is_written(tmp_path):
    stream = BatchStream(_OneEpochLoader(), SkipCounter(max_skip_fraction=0.5), tmp_path / "skipped", rank=0)
    next(stream), next(stream)
    assert not (tmp_path / "skipped").exists()  # the epoch has not rolled over
    stream.finish()  # the run ended
    assert (tmp_path / "skipped" / "skipped_epoch000.json").is_file()
