"""`bevt demo`: the report follows the numbers it is given and reads no more into them than its
intervals support, the intervals have their stated coverage, finished phases are reused, and
the whole demo runs end to end at a tiny scale (every phase, two seeds)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bevt.cli import main
from bevt.config import read_recipe
from bevt.demo import report as demo_report
from bevt.demo import run as demo
from bevt.demo.stats import mean_and_sd, paired_difference, verdict

REPO = Path(__file__).resolve().parents[1]


def _correct(rng, accuracy: float, clips: int) -> list[int]:
    """0/1 per clip with exactly `accuracy` percent ones, in random order."""
    ones = round(accuracy / 100 * clips)
    return rng.permutation([1] * ones + [0] * (clips - ones)).tolist()


def _results(tmp_path: Path, seeds=(0, 1, 2), finetune_seeds=(0, 1, 2)) -> dict:
    """Results as `collect_results` gathers them. Temporal normal top-1 per seed: BEVT 80/82/84,
    BEVT-I 40/42/38 (a difference no noise explains), BEVT-V 81/79/83 and No pretraining
    79/81/83 (within noise of BEVT on the spatial task: all 90); single-frame and shuffled at
    chance on the temporal task, as normal on the spatial one."""
    rng = np.random.default_rng(0)
    temporal = {"No pretraining": (79, 81, 83), "BEVT-I": (40, 42, 38), "BEVT-V": (81, 79, 83), "BEVT": (80, 82, 84)}

    def seed_results(i):
        return {method: {"spatial": {mode: _correct(rng, 90.0, 100) for mode in demo_report.MODES},
                         "temporal": {"normal": _correct(rng, temporal[method][i], 100),
                                      "single_frame": _correct(rng, 17.0, 100),
                                      "shuffled": _correct(rng, 16.0, 100)}}
                for method in demo_report.METHODS}

    runs = {"BEVT-I": _run_dir(tmp_path / "image", ("image",)), "BEVT": _run_dir(tmp_path / "joint", ("image", "video")),
            "BEVT-V": _run_dir(tmp_path / "video", ("video",))}
    streams = {"BEVT-I": ("image",), "BEVT": ("image", "video"), "BEVT-V": ("video",)}
    return {
        "seeds": list(seeds), "finetune_seeds": list(finetune_seeds), "quick": False, "data_seed": 0,
        "model": {"flavor": "debug", "params": 2_286_046},
        "batch": {"images": 32, "clips": 8, "finetune_clips": 8},
        "data": {"size": 64, "frames": 8, "images": 1200, "image_classes": 8, "pretrain_videos": 1344,
                 "tasks": {"spatial": {"classes": 8, "chance": 12.5, "labelled": 384, "pool": 768, "val": 100},
                           "temporal": {"classes": 6, "chance": 100 / 6, "labelled": 288, "pool": 576, "val": 100}}},
        "tokenizer": {"codebook_size": 32, "psnr_db": 24.0, "codes_used": 0.8},
        "steps": {"tokenizer": 600, "pretrain": {"BEVT-I": 300, "BEVT": 200, "BEVT-V": 250},
                  "finetune": {"spatial": 300, "temporal": 720}},
        "finetune_lr": {"No pretraining": 1e-3, "BEVT-I": 3e-4, "BEVT-V": 3e-4, "BEVT": 3e-4},
        "pretrain": {str(s): {name: {f"{st}_loss": demo_report.last_loss(path, st) for st in streams[name]}
                              for name, path in runs.items()} for s in seeds},
        "runs": runs,
        "probe": {str(s): seed_results(i) for i, s in enumerate(seeds)},
        "finetune": {str(s): seed_results(i) for i, s in enumerate(finetune_seeds)},
        "machine": {"cpus": 2, "torch": torch.__version__},
        "phases": [{"name": "benchmark", "wall_s": 12.0, "cpu_s": 20.0}, {"name": "tokenizer", "wall_s": 75.5,
                                                                          "cpu_s": 80.0}],
        "figures": {"masked_video.png": "a clip"},
    }


def _run_dir(path: Path, streams: tuple[str, ...], steps: int = 20) -> str:
    """A run directory whose metrics.jsonl logs losses falling linearly from 5 to 3."""
    path.mkdir()
    with (path / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            row = {"step": step}
            for stream in streams:
                row.update({f"loss_{stream}": 5 - 2 * step / steps, f"acc_{stream}": 0.5 * step / steps})
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_report_states_spreads_and_only_what_the_intervals_support(tmp_path):
    results = _results(tmp_path)
    report = demo_report.write_report(results, tmp_path).read_text()
    assert "| BEVT | images + videos | 90.0 ± 0.0 | 82.0 ± 2.0 |" in report
    assert "| BEVT-I | images | 90.0 ± 0.0 | 40.0 ± 2.0 |" in report
    rows = {(r["a"], r["b"], r["task"]): r for r in demo_report.comparison_rows(results, "finetune")}
    motion = rows[("BEVT", "BEVT-I", "temporal")]
    assert motion["difference"] == pytest.approx(42.0) and motion["low"] > 0 and motion["verdict"] == "BEVT ahead of BEVT-I"
    appearance = rows[("BEVT", "BEVT-V", "spatial")]
    assert appearance["difference"] == 0 and appearance["verdict"] == "not resolved at this scale"
    assert rows[("BEVT-I", "No pretraining", "temporal")]["verdict"] == "BEVT-I behind No pretraining"
    assert rows[("BEVT", "No pretraining", "temporal")]["verdict"] == "not resolved at this scale"
    assert "| BEVT - BEVT-I | temporal | +42.0 [" in report
    # Table 2: the temporal task's drop without frame order, with its interval
    assert re.search(r"\| BEVT \| Temporal \(motion, like SSv2\) \| 82\.0 ± 2\.0 \| 17\.0 ± 0\.0 \| 16\.0 ± 0\.0 \| "
                     r"\+65\.0 \[\+[\d.]+, \+[\d.]+\] \|", report)
    findings = demo_report.findings_markdown(results, "finetune").splitlines()
    assert findings[2].startswith("| The video stream helps motion") and findings[2].endswith("| reproduced |")
    assert findings[3].endswith("| not resolved at this scale |")  # BEVT - BEVT-V on appearance: 0
    assert findings[5].endswith("| reproduced |")  # the temporal task collapses with a single frame
    assert "Seeds | 0, 1, 2 (pretraining and linear probes); finetuning: 0, 1, 2" in report
    assert "1 min 15.5 s | 80 s" in report and "masked_video.png" in report
    # no prose beyond what the numbers say: the old rule-based discussion is gone
    assert "Discussion" not in report and "beats" not in report


def test_one_seed_supports_no_ordering(tmp_path):
    results = _results(tmp_path, finetune_seeds=(0,))
    rows = demo_report.comparison_rows(results, "finetune")
    assert {row["verdict"] for row in rows} == {"one seed: not resolved"}
    assert "over 1 seed)" in "\n".join(title for title, _ in demo_report.tables(results))


@pytest.mark.parametrize("seeds, seed_sd, video_effect, low, high", [
    (3, 0.08, 0.0, 0.92, 0.985),  # seed noise and clip noise of similar size
    (3, 0.3, 0.0, 0.92, 0.985),  # seed noise dominates: a t-interval over 3 seeds
    (3, 0.0, 0.0, 0.92, 0.99),  # clip noise only
    (1, 0.0, 0.0, 0.92, 0.985),  # one seed: the paired binomial interval
    (3, 0.0, 1.0, 0.95, 1.0),  # clips differ between methods, seeds do not: conservative
])
def test_paired_interval_has_its_coverage_on_simulated_accuracies(seeds, seed_sd, video_effect, low, high):
    rng = np.random.default_rng(seeds * 100 + int(10 * seed_sd))
    coverage = _diagnostics().interval_coverage(rng, seeds, seed_sd, video_effect, 600)
    assert low <= coverage <= high


def test_interval_basics():
    assert mean_and_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    a, b = [[1, 1, 0, 0]] * 3, [[1, 0, 0, 0]] * 3
    interval = paired_difference(a, b)
    assert interval["difference"] == 25.0 and interval["low"] < 25.0 < interval["high"]
    assert verdict({"low": 1.0, "high": 2.0, "seeds": 3}, "A", "B") == "A ahead of B"
    with pytest.raises(ValueError):
        paired_difference([[1, 0]], [[1, 0, 1]])


def test_phase_runner_reuses_finished_phases_for_the_same_settings(tmp_path, capsys):
    calls = []

    def work(directory):
        calls.append(directory)
        (directory / "made").write_text("x")
        return {"value": len(calls)}

    # settings as the demo makes them: a dataclass's tuples, which results.json stores as lists
    settings = {"scale": {"steps": (3, 4)}}
    assert demo.PhaseRunner(tmp_path, settings, total=1).run("phase", "p", work) == {"value": 1}
    assert demo.PhaseRunner(tmp_path, settings, total=1).run("phase", "p", work) == {"value": 1}
    assert len(calls) == 1 and "reused" in capsys.readouterr().out
    assert demo.PhaseRunner(tmp_path, {"scale": {"steps": (3, 5)}}, total=1).run("phase", "p", work) == {"value": 2}


TINY = demo.DemoScale(
    size=64, frames=8, images_per_class=4, videos_per_class=3, labelled_per_class=2, val_videos_per_class=1,
    tokenizer_steps=2, codebook_size=32, pretrain_steps={"BEVT-I": 1, "BEVT": 1, "BEVT-V": 1},
    finetune_steps={"spatial": 1, "temporal": 1}, seeds=(0, 1), finetune_seeds=1,
)


def _check_report(out: Path) -> str:
    report = (out / "report.md").read_text()
    assert "## Table 1, linear probe" in report and "## Table 2, finetuning" in report
    assert re.search(r"\| BEVT \| images \+ videos \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|", report)
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {"pretraining_curves.png", "masked_video.png", "masked_image.png"} <= {p.name for p in out.glob("*.png")}
    return report


def test_demo_runs_end_to_end_at_a_tiny_scale(tmp_path, one_torch_thread, capsys):
    results = demo.run_all(tmp_path, TINY, seeds=(0, 1), finetune_seeds=1, quick=True)
    _check_report(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["probe"] == results["probe"]
    assert set(results["probe"]) == {"0", "1"} and set(results["finetune"]) == {"0"}
    temporal_val = results["data"]["tasks"]["temporal"]["val"]
    for kind in ("probe", "finetune"):
        for method in demo_report.METHODS:
            assert {len(v) for v in results[kind]["0"][method]["temporal"].values()} == {temporal_val}
    # pretrained models finetune at the recipe's lr, the baseline at the from-scratch one
    recipe_lr = read_recipe(demo.FINETUNE_RECIPE)["optim"]["lr"]
    assert results["finetune_lr"] == {"No pretraining": demo.SCRATCH_LR, "BEVT-I": recipe_lr, "BEVT-V": recipe_lr,
                                      "BEVT": recipe_lr}
    # the labelled sets are a part of the pool; the pool is every training clip of both tasks
    tasks = results["data"]["tasks"]
    assert tasks["temporal"]["labelled"] == 12 and tasks["temporal"]["pool"] == 18
    assert results["data"]["pretrain_videos"] == tasks["spatial"]["pool"] + tasks["temporal"]["pool"]
    # finetuning a second seed later reuses every finished phase and runs only the new ones
    capsys.readouterr()
    again = demo.run_all(tmp_path, TINY, seeds=(0, 1), finetune_seeds=2, quick=True)
    printed = capsys.readouterr().out
    new_phases = [line for line in printed.splitlines() if line.endswith(" ...")]
    assert len(new_phases) == len(demo.METHODS) + 1 and all("seed 1: finetune" in line for line in new_phases[:-1])
    assert again["probe"] == results["probe"] and again["finetune"]["0"] == results["finetune"]["0"]
    assert set(again["finetune"]) == {"0", "1"}


@pytest.mark.slow
def test_quick_demo_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed
    _check_report(tmp_path)


def test_bad_seeds_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "--seeds", "0,x", "--out", str(tmp_path)]) == 2
    assert main(["demo", "--seeds", "0,1", "--finetune-seeds", "3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def _diagnostics():
    spec = importlib.util.spec_from_file_location("demo_diagnostics", REPO / "benchmarks" / "demo_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnostics_copy_from_nearest_visible_and_tubelet_asymmetry():
    diagnostics = _diagnostics()
    tokens = torch.arange(4).view(4, 1, 1).expand(4, 1, 2).clone()  # frame t holds token t
    mask = torch.zeros(4, 1, 2, dtype=torch.bool)
    mask[1:3, 0, 0] = True  # cell 0 masked in frames 1 and 2
    mask[:, 0, 1] = True  # cell 1 masked everywhere
    guess = diagnostics.copy_from_nearest_visible(tokens, mask)
    assert guess[:, 0, 0].tolist() == [0, 0, 3, 3]
    assert guess[:, 0, 1].tolist() == [-1, -1, -1, -1]
    generator = torch.Generator().manual_seed(0)
    assert diagnostics.tubelet_asymmetry(diagnostics.inflate_patch_embed(torch.randn(32, 3, 4, 4,
                                                                                    generator=generator))) == 0.0
    assert 0.9 < diagnostics.tubelet_asymmetry(torch.randn(32, 3, 2, 4, 4, generator=generator)) < 1.1
