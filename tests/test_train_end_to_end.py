"""Whole runs on the tiny CPU recipes and the built-in synthetic benchmark.

- the chain: stage 1 -> stage 2 (inflated from stage 1) -> finetune -> evaluate with the temporal
  test -> predict on an mp4;
- exact resume: runs killed with SIGKILL (inside a checkpoint write, then at a random step) or
  stopped with SIGTERM (checkpoint at the step it was in, exit 143) and resumed with
  `--resume auto` end bitwise equal to an uninterrupted run; Ctrl-C (SIGINT) exits 130 the same way;
- DDP and FSDP: 2 gloo processes reach the weights of 1 process with the same global batch.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from bevt.cli import main
from bevt.config import load_config
from bevt.models.convert import inflate_patch_embed
from bevt.data.synthetic import make_synthetic_benchmark
from conftest import train_tiny_tokenizer
from bevt.checkpoint import complete_checkpoints, read_weights
from bevt.train.logging import read_metrics
from bevt.train.main import read_init_weights
from bevt.models.build import build_model
from bevt.train.tasks import FinetuneTask, PretrainTask


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """The synthetic benchmark at 64 px (16-frame clips) and a VQ tokenizer, made once per session."""
    root = tmp_path_factory.mktemp("bench")
    paths = make_synthetic_benchmark(str(root), size=64, frames=16, images_per_class=4, val_images_per_class=1,
                                     videos_per_class=3, val_videos_per_class=2)
    tokenizer = root / "tokenizer"
    train_tiny_tokenizer(paths["images_train"], tokenizer, size=64, epochs=0.1)
    paths["tokenizer"] = str(tokenizer)
    return paths


def pretrain_overrides(bench, out):
    return [f"tokenizer.path={bench['tokenizer']}", f"data.images={bench['images_train']}",
            f"data.train={bench['spatial_train']}", f"run.out={out}"]


def finetune_overrides(bench, out):
    return [f"data.train={bench['temporal_train']}", f"data.val={bench['temporal_val']}",
            f"data.labels={bench['temporal_classes']}", f"run.out={out}"]


def test_chain_stage1_stage2_finetune_evaluate_predict(bench, tmp_path, capsys):
    stage1, stage2, finetuned = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "finetune"
    assert main(["pretrain", "--config", "tiny_joint", *pretrain_overrides(bench, stage2), "run.init_from=null",
                 "--dry-run"]) == 0
    assert "dry run ok" in capsys.readouterr().out
    assert main(["pretrain", "--config", "tiny_image", *pretrain_overrides(bench, stage1), "optim.epochs=1"]) == 0
    assert main(["pretrain", "--config", "tiny_joint", *pretrain_overrides(bench, stage2), f"run.init_from={stage1}",
                 "optim.epochs=0.5", "optim.warmup_epochs=0.2"]) == 0
    # finetune.num_classes left out: counted from data.labels and saved, so evaluate and predict
    # rebuild the same head
    assert main(["finetune", "--config", "tiny_finetune", *finetune_overrides(bench, finetuned),
                 f"run.init_from={stage2}", "optim.epochs=1", "finetune.num_classes=null"]) == 0
    assert load_config(str(finetuned / "config.yaml")).finetune.num_classes == 6
    joint_metrics = read_metrics(stage2)
    assert {"loss_image", "loss_video", "acc_image", "acc_video", "clips_per_s", "images_per_s",
            "time_data", "time_tokenizer", "time_forward_backward", "time_optimizer"} <= set(joint_metrics[-1])
    assert (stage2 / "config.yaml").is_file() and (stage2 / "tensorboard").is_dir()

    capsys.readouterr()
    assert main(["evaluate", "--config", "tiny_finetune", *finetune_overrides(bench, finetuned),
                 "--checkpoint", str(finetuned), "--temporal-test", "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["results"]) == {"normal", "single_frame", "shuffled"}
    assert results["videos"] == 12 and "| Single-frame |" in (tmp_path / "eval" / "results.md").read_text()

    # unreadable test videos are left out and counted, never scored twice through their stand-in
    val_dir = os.path.dirname(bench["temporal_val"])
    broken_list, empty = tmp_path / "val_broken.txt", tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    lines = [f"{os.path.join(val_dir, line)}" for line in open(bench["temporal_val"]).read().splitlines()]
    broken_list.write_text("\n".join([f"{tmp_path / 'missing.mp4'} 0", *lines, f"{empty} 1"]) + "\n")
    assert main(["evaluate", "--config", "tiny_finetune", *finetune_overrides(bench, finetuned),
                 f"data.val={broken_list}", "--checkpoint", str(finetuned), "--out", str(tmp_path / "eval2")]) == 0
    broken_results = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert (broken_results["videos"], broken_results["unreadable"]) == (12, 2)
    assert broken_results["results"]["normal"] == results["results"]["normal"]
    # a label outside the checkpoint's classes is an error naming file and line, not a silent miss
    bad = tmp_path / "val_bad_label.txt"
    bad.write_text("\n".join([*lines[:2], lines[2].rsplit(" ", 1)[0] + " 7", *lines[3:]]) + "\n")
    capsys.readouterr()
    assert main(["evaluate", "--config", "tiny_finetune", *finetune_overrides(bench, finetuned), f"data.val={bad}",
                 "--checkpoint", str(finetuned)]) == 2
    assert f"{bad}:3: label 7 is outside 0..5 (the checkpoint's finetune.num_classes=6)" in capsys.readouterr().err

    video = os.path.join(val_dir, "val_00000.mp4")
    capsys.readouterr()
    assert main(["predict", video, "--checkpoint", str(finetuned), "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert len(prediction["top"]) == 5
    assert prediction["top"][0]["probability"] >= prediction["top"][-1]["probability"]
    class_names = open(bench["temporal_classes"]).read().split()
    assert {entry["label"] for entry in prediction["top"]} <= set(class_names)

    # stage 2 started from stage 1 inflated: the video patch embedding is the 2D one over 2 frames
    cfg = load_config("tiny_joint", [*pretrain_overrides(bench, tmp_path / "x"), f"run.init_from={stage1}"])
    model = build_model(cfg)
    PretrainTask(cfg, {}, torch.device("cpu")).init_weights(model, *read_init_weights(str(stage1)))
    image_embed = read_weights(complete_checkpoints(stage1)[-1])["encoder.patch_embed_2d.proj.weight"]
    assert torch.equal(model.encoder.patch_embed.proj.weight, inflate_patch_embed(image_embed))
    # so does a finetuning started straight from stage 1 (BEVT-I): its checkpoint's video patch
    # embedding was never trained, and must not be used
    cfg = load_config("tiny_finetune", [*finetune_overrides(bench, tmp_path / "y"), f"run.init_from={stage1}"])
    classifier = build_model(cfg)
    stream = SimpleNamespace(batches_per_epoch=1)
    FinetuneTask(cfg, stream, None, torch.device("cpu")).init_weights(classifier, *read_init_weights(str(stage1)))
    assert torch.equal(classifier.encoder.patch_embed.proj.weight, inflate_patch_embed(image_embed))


def test_bad_labels_fail_before_training_with_file_and_line(bench, tmp_path, capsys):
    val_dir = os.path.dirname(bench["temporal_val"])
    lines = [f"{os.path.join(val_dir, line)}" for line in open(bench["temporal_val"]).read().splitlines()]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*lines[:2], lines[2].rsplit(" ", 1)[0] + " 7", *lines[3:]]) + "\n")
    out = tmp_path / "never"
    capsys.readouterr()
    assert main(["finetune", "--config", "tiny_finetune", *finetune_overrides(bench, out), f"data.train={bad}",
                 "run.init_from=null"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: label 7 is outside 0..5 (finetune.num_classes=6)" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, nothing trained
    assert main(["finetune", "--config", "tiny_finetune", *finetune_overrides(bench, out), "finetune.num_classes=5",
                 "run.init_from=null"]) == 2
    assert "the annotations name 6 classes, but finetune.num_classes=5" in capsys.readouterr().err



def test_diverging_run_stops_with_a_clear_error_and_no_checkpoint(bench, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert main(["pretrain", "--config", "tiny_image", *pretrain_overrides(bench, out), "optim.lr=1e30",
                 "optim.warmup_epochs=0", "optim.epochs=1", "run.log_every=1"]) == 2
    err = capsys.readouterr().err
    assert "the loss is NaN or infinite" in err and "optim.lr" in err
    assert complete_checkpoints(out) == []


# `bevt` whose process SIGKILLs itself inside the save of step 4: after the checkpoint's files are
# written and fsynced, before the rename that completes it.
DIE_INSIDE_SAVE_OF_STEP_4 = """
import os, signal, sys
from pathlib import Path
rename = Path.rename
def rename_or_die(self, target):
    if self.name == "step_0000004.tmp":
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Path.rename = rename_or_die
from bevt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _bevt(args, script=None):
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "bevt"]
    return subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_weights(run_dir):
    return load_file(complete_checkpoints(run_dir)[-1] / "model.safetensors")


def _joint_args(bench, out, checkpoint_every=2):
    """6 steps of 2 clips + 8 images; the image loader wraps around at step 5."""
    return ["pretrain", "--config", "tiny_joint", *pretrain_overrides(bench, out), "run.init_from=null",
            "data.frames=4", "data.interval=4", "data.video_batch_size=2", "optim.epochs=0.5",
            "optim.warmup_epochs=0.2", f"run.checkpoint_every={checkpoint_every}", "run.log_every=1", "--resume", "auto"]


@pytest.fixture(scope="module")
def joint_reference(bench, tmp_path_factory):
    """The uninterrupted run that the killed and stopped ones must reproduce bitwise."""
    out = tmp_path_factory.mktemp("reference")
    reference = _bevt(_joint_args(bench, out))
    assert reference.wait() == 0, reference.stderr.read()
    return out


def _signal_after_step(process, run_dir, step, signum):
    while process.poll() is None and not any(m["step"] >= step for m in read_metrics(run_dir)):
        time.sleep(0.02)
    process.send_signal(signum)


def _assert_same_run(expected_dir, run_dir, context):
    expected, got = _final_weights(expected_dir), _final_weights(run_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), context
    losses = [(m["step"], m["loss"]) for m in read_metrics(run_dir)]
    assert losses == [(m["step"], m["loss"]) for m in read_metrics(expected_dir)], context


def test_resume_after_sigkill_is_bitwise_exact(bench, joint_reference, tmp_path):
    """A checkpoint every 2 steps; killed inside the save of step 4, then at a random step."""
    def args(out):
        return _joint_args(bench, out)

    run = tmp_path / "killed"
    first = _bevt(args(run), script=DIE_INSIDE_SAVE_OF_STEP_4)
    assert first.wait() == -signal.SIGKILL
    assert [p.name for p in complete_checkpoints(run)] == ["step_0000002"]
    assert (run / "checkpoints" / "step_0000004.tmp").is_dir()

    kill_after = random.randint(3, 5)
    second = _bevt(args(run))  # takes over the lock the SIGKILLed run left behind
    _signal_after_step(second, run, kill_after, signal.SIGKILL)
    assert second.wait() == -signal.SIGKILL, f"the run ended before the kill after step {kill_after}"

    last = _bevt(args(run))
    assert last.wait() == 0, last.stderr.read()
    _assert_same_run(joint_reference, run, f"killed after step {kill_after}")


def test_sigterm_checkpoints_the_current_step_and_resume_is_bitwise_exact(bench, joint_reference, tmp_path):
    """What a scheduler does before preemption: the run finishes its step, writes a checkpoint
    (none is scheduled: one every 100 steps), says how to resume, and exits 128 + 15."""
    run = tmp_path / "stopped"
    first = _bevt(_joint_args(bench, run, checkpoint_every=100))
    _signal_after_step(first, run, 2, signal.SIGTERM)
    assert first.wait() == 143, first.stderr.read()
    err = first.stderr.read()
    (stopped,) = complete_checkpoints(run)
    assert f"stopped by SIGTERM after step {int(stopped.name[5:])} of 6; checkpoint written to {stopped}" in err
    assert "resume with: bevt pretrain --config tiny_joint" in err and "Traceback" not in err
    assert int(stopped.name[5:]) < 6 and not (run / "run.lock").exists()

    last = _bevt(_joint_args(bench, run, checkpoint_every=100))
    assert last.wait() == 0, last.stderr.read()
    _assert_same_run(joint_reference, run, f"stopped after {stopped.name}")


def test_ctrl_c_checkpoints_and_exits_130(bench, tmp_path):
    run = tmp_path / "interrupted"
    first = _bevt(_joint_args(bench, run, checkpoint_every=100))
    _signal_after_step(first, run, 1, signal.SIGINT)
    assert first.wait() == 130, first.stderr.read()
    assert "stopped by SIGINT" in first.stderr.read() and len(complete_checkpoints(run)) == 1


def test_ddp_and_fsdp_two_processes_match_one(bench, tmp_path):
    """Same global batch (4 clips = 2 ranks x 2), no dropout: 3 steps give the same weights."""
    common = ["finetune", "--config", "tiny_finetune", "run.init_from=null", "model.drop_path_rate=0",
              "optim.epochs=0.75", "optim.warmup_epochs=0.5", "run.seed=3"]
    single = _bevt([*common, *finetune_overrides(bench, tmp_path / "one"), "data.video_batch_size=4"])
    assert single.wait() == 0, single.stderr.read()
    one = _final_weights(tmp_path / "one")
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bevt",
             *common, *finetune_overrides(bench, out), "data.video_batch_size=2", f"run.parallel={parallel}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert run.returncode == 0, run.stderr
        assert [p.name for p in complete_checkpoints(out)] == ["step_0000003"]
        two = _final_weights(out)
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{parallel}: {name}")


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(bench, tmp_path):
    """Schedulers signal processes one by one: only rank 1 gets SIGTERM here, yet both ranks must
    stop after the same step (else one waits forever in the next all-reduce) and checkpoint it."""
    out = tmp_path / "ddp"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bevt",
         "finetune", "--config", "tiny_finetune", *finetune_overrides(bench, out), "run.init_from=null",
         "optim.epochs=2", "optim.warmup_epochs=0", "data.video_batch_size=2", "run.log_every=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    while launcher.poll() is None and not read_metrics(out):
        time.sleep(0.05)
    workers = open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()
    (rank1,) = [pid for pid in workers if b"\0RANK=1\0" in b"\0" + open(f"/proc/{pid}/environ", "rb").read()]
    os.kill(int(rank1), signal.SIGTERM)
    assert launcher.wait() != 0
    err = launcher.stderr.read()
    (stopped,) = complete_checkpoints(out)
    assert err.count(f"stopped by SIGTERM after step {int(stopped.name[5:])} of 8;") == 2, err  # both ranks
