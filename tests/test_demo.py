"""`bevt demo`: the report follows the numbers it is given, finished phases are reused, the whole
demo runs end to end at a tiny scale, and `bevt demo --quick` writes its report (slow)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from bevt.demo import report as demo_report
from bevt.demo import run as demo
from bevt.cli import main
from bevt.config import read_recipe


def _run_dir(path: Path, streams: tuple[str, ...], start: float, end: float, steps: int = 20) -> str:
    """A run directory whose metrics.jsonl logs losses falling linearly from `start` to `end`."""
    path.mkdir()
    with (path / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            loss = start + (end - start) * step / steps
            row = {"step": step}
            for stream in streams:
                row.update({f"loss_{stream}": loss, f"acc_{stream}": 0.5 * step / steps})
            f.write(json.dumps(row) + "\n")
    return str(path)


def _results(tmp_path: Path, bevt_temporal: float) -> dict:
    """Results as `bevt.demo.collect_results` gathers them, with chosen accuracies."""
    temporal_of = {"No pretraining": 50.0, "BEVT-I": 48.0, "BEVT-V": 55.0, "BEVT": bevt_temporal}
    finetune = {
        method: {
            "spatial": {"normal": 90.0, "single_frame": 88.0, "shuffled": 90.0},
            "temporal": {"normal": temporal, "single_frame": 17.0, "shuffled": 16.0},
        }
        for method, temporal in temporal_of.items()
    }
    runs = {
        "BEVT-I": _run_dir(tmp_path / "image", ("image",), 5.0, 3.0),
        "BEVT": _run_dir(tmp_path / "joint", ("image", "video"), 4.0, 2.0),
        "BEVT-V": _run_dir(tmp_path / "video", ("video",), 5.0, 2.5),
    }
    streams = {"BEVT-I": ("image",), "BEVT": ("image", "video"), "BEVT-V": ("video",)}
    return {
        "seed": 3,
        "quick": False,
        "model": {"flavor": "debug", "params": 2_286_046},
        "batch": {"images": 32, "clips": 8, "finetune_clips": 8},
        "data": {"size": 64, "frames": 8, "images": 1200, "image_classes": 8, "pretrain_videos": 336,
                 "tasks": {"spatial": {"classes": 8, "chance": 12.5, "train": 192, "val": 128},
                           "temporal": {"classes": 6, "chance": 100 / 6, "train": 144, "val": 96}}},
        "tokenizer": {"codebook_size": 256, "psnr_db": 24.0, "codebook_usage": 0.8},
        "steps": {"tokenizer": 600, "pretrain": {"BEVT-I": 300, "BEVT": 200, "BEVT-V": 200},
                  "finetune": {"spatial": 150, "temporal": 150}},
        "pretrain": {name: {f"{s}_trend": demo_report.loss_trend(path, s) for s in streams[name]}
                     for name, path in runs.items()},
        "runs": runs,
        "finetune": finetune,
        "finetune_train_acc": {m: {"spatial": 95.0, "temporal": 70.0} for m in temporal_of},
        "tokens": {"clips": 48, "codebook_size": 256, "codes_used": 200, "top_token_share": 0.3,
                   "object_pixel_share": 0.1, "object_psnr_db": 14.0, "background_psnr_db": 25.0,
                   "static_cell_change_rate": 0.2, "object_cell_change_rate": 0.6, "copy_accuracy": 0.4},
        "machine": {"cpus": 2, "torch": torch.__version__},
        "phases": [{"name": "benchmark", "wall_s": 12.0}, {"name": "tokenizer", "wall_s": 75.5}],
        "figures": {"masked_video.png": "a clip"},
    }


def test_report_tables_and_discussion_follow_the_numbers(tmp_path):
    results = _results(tmp_path, bevt_temporal=80.0)
    report = demo_report.write_report(results, tmp_path).read_text()
    assert "| BEVT | images + videos | 90.0 | 80.0 |" in report
    assert "| Temporal (motion, like SSv2) | 80.0 | 17.0 ↓63.0 | 16.0 ↓64.0 | 16.7 |" in report
    assert "Seed | 3" in report and "1 min 15.5 s" in report
    assert "![" in report and "masked_video.png" in report
    assert "BEVT beats No pretraining by 30.0 points" in report
    assert "within the chance spread" in report  # temporal single-frame / shuffled near chance
    assert "one frame carries the label" in report  # spatial single-frame near normal
    assert "Why BEVT did not beat" not in report


def test_diagnosis_is_written_when_bevt_does_not_beat_the_baseline(tmp_path):
    results = _results(tmp_path, bevt_temporal=52.0)
    text = "\n".join(demo_report.discussion(results))
    assert "Why BEVT did not beat the baseline on the temporal task" in text
    assert "seed 3" in text
    assert "BEVT and No pretraining are within noise" in text
    assert "still falling" in text  # the fake losses fall linearly to the end
    assert "the nearest frame where its cell is visible 40.0%" in text
    assert "far better than the moving object" in text and "noise that no model can predict" in text


def test_pretraining_curves_png(tmp_path):
    results = _results(tmp_path, bevt_temporal=80.0)
    out = tmp_path / "curves.png"
    demo_report.plot_pretraining_curves(results["runs"], out, {"BEVT": 20})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_copy_from_nearest_visible_takes_the_closest_unmasked_frame():
    tokens = torch.arange(4).view(4, 1, 1).expand(4, 1, 2).clone()  # frame t holds token t
    mask = torch.zeros(4, 1, 2, dtype=torch.bool)
    mask[1:3, 0, 0] = True  # cell 0 masked in frames 1 and 2
    mask[:, 0, 1] = True  # cell 1 masked everywhere
    guess = demo.copy_from_nearest_visible(tokens, mask)
    assert guess[:, 0, 0].tolist() == [0, 0, 3, 3]
    assert guess[:, 0, 1].tolist() == [-1, -1, -1, -1]


def test_phase_runner_reuses_finished_phases_for_the_same_settings(tmp_path, capsys):
    calls = []

    def work(directory):
        calls.append(directory)
        (directory / "made").write_text("x")
        return {"value": len(calls)}

    assert demo.PhaseRunner(tmp_path, {"seed": 0}, total=1).run("phase", "p", work) == {"value": 1}
    assert demo.PhaseRunner(tmp_path, {"seed": 0}, total=1).run("phase", "p", work) == {"value": 1}
    assert len(calls) == 1 and "reused" in capsys.readouterr().out
    assert demo.PhaseRunner(tmp_path, {"seed": 1}, total=1).run("phase", "p", work) == {"value": 2}


TINY = demo.DemoScale(
    size=64, frames=8, images_per_class=4, videos_per_class=2, val_videos_per_class=1,
    tokenizer_steps=5, codebook_size=32, pretrain_steps={"BEVT-I": 1, "BEVT": 1, "BEVT-V": 1},
    finetune_steps={"spatial": 1, "temporal": 1},
)


def _check_report(out: Path) -> str:
    report = (out / "report.md").read_text()
    assert "## Table 1" in report and "## Table 2" in report
    assert re.search(r"\| BEVT \| images \+ videos \| [\d.]+ \| [\d.]+ \|", report)
    assert re.search(r"\| Temporal \(motion, like SSv2\) \| [\d.]+ \| [\d.]+ [↓↑][\d.]+ \|", report)
    assert "## Discussion" in report
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {"pretraining_curves.png", "masked_video.png", "masked_image.png"} <= {p.name for p in out.glob("*.png")}
    return report


def test_demo_runs_end_to_end_at_a_tiny_scale(tmp_path):
    results = demo.run_all(tmp_path, TINY, seed=0, quick=True)
    _check_report(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["finetune"] == results["finetune"]
    assert set(results["finetune"]) == set(demo_report.METHODS)
    # pretrained models finetune at the recipe's lr, the baseline at the from-scratch one
    recipe_lr = read_recipe(demo.FINETUNE_RECIPE)["optim"]["lr"]
    assert results["finetune_lr"] == {"No pretraining": demo.SCRATCH_LR, "BEVT-I": recipe_lr, "BEVT-V": recipe_lr,
                                      "BEVT": recipe_lr}
    assert recipe_lr < demo.SCRATCH_LR
    # finetuning from the image stream starts from its inflated (frame-symmetric) patch embedding
    assert results["tubelet_asymmetry"]["BEVT-I"]["start"] == 0.0
    assert results["tubelet_asymmetry"]["No pretraining"]["start"] > 0.5


def test_quick_demo_writes_the_report_in_three_minutes(tmp_path, capsys):
    started = time.perf_counter()
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed
    _check_report(tmp_path)
    assert seconds <= 180, f"bevt demo --quick took {seconds:.0f} s"


def test_tubelet_asymmetry_is_zero_for_an_inflated_embedding_and_about_one_for_a_random_one():
    from bevt.models.convert import inflate_patch_embed
    from bevt.demo.run import tubelet_asymmetry

    torch.manual_seed(0)
    assert tubelet_asymmetry(inflate_patch_embed(torch.randn(32, 3, 4, 4))) == 0.0
    assert 0.9 < tubelet_asymmetry(torch.randn(32, 3, 2, 4, 4)) < 1.1
