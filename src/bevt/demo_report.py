"""The demo's report: tables, loss curves and a discussion computed from the measured numbers.

Pure functions of the `results` dict that `bevt.demo` writes to results.json, so the report can be
rebuilt (and tested) without training anything. Accuracies are top-1 in percent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METHODS = ("No pretraining", "BEVT-I", "BEVT-V", "BEVT")
PRETRAIN_DATA = {"No pretraining": "-", "BEVT-I": "images", "BEVT-V": "videos", "BEVT": "images + videos"}
TASKS = ("spatial", "temporal")
MODES = ("normal", "single_frame", "shuffled")
MODE_NAMES = {"normal": "Normal", "single_frame": "Single-frame", "shuffled": "Random-shuffling"}
TASK_NAMES = {"spatial": "Spatial (appearance, like K400)", "temporal": "Temporal (motion, like SSv2)"}
LOSS_CURVES_PNG = "pretraining_curves.png"


# ----------------------------------------------------------------------------------------------
# Noise: the validation sets are small, so every comparison says how large a difference chance
# alone would produce.
# ----------------------------------------------------------------------------------------------


def noise_points(accuracy: float, n: int) -> float:
    """Two standard errors, in points, of the difference of two accuracies near `accuracy` on n clips."""
    p = min(max(accuracy / 100, 1 / n), 1 - 1 / n)
    return 200 * math.sqrt(2 * p * (1 - p) / n)


def chance_band(chance: float, n: int) -> float:
    """Two standard errors, in points, of one accuracy at chance level on n clips."""
    p = chance / 100
    return 200 * math.sqrt(p * (1 - p) / n)


def _top1(results: dict, method: str, task: str, mode: str = "normal") -> float:
    return results["finetune"][method][task][mode]


def _compare(results: dict, a: str, b: str, task: str) -> tuple[float, float]:
    """(a - b, noise) on `task`'s normal top-1."""
    acc_a, acc_b = _top1(results, a, task), _top1(results, b, task)
    n = results["data"]["tasks"][task]["val"]
    return acc_a - acc_b, noise_points((acc_a + acc_b) / 2, n)


def _verdict(delta: float, noise: float) -> str:
    if delta > noise:
        return f"better by {delta:.1f} points"
    if delta < -noise:
        return f"worse by {-delta:.1f} points"
    return f"within noise ({delta:+.1f} points)"


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def table1_markdown(results: dict) -> str:
    """Methods x tasks, normal top-1 (the paper's Table 1)."""
    chance = {task: results["data"]["tasks"][task]["chance"] for task in TASKS}
    lines = [
        "| Method | Pretraining data | Spatial top-1 | Temporal top-1 |",
        "|---|---|---:|---:|",
    ]
    for method in METHODS:
        cells = " | ".join(f"{_top1(results, method, task):.1f}" for task in TASKS)
        lines.append(f"| {method} | {PRETRAIN_DATA[method]} | {cells} |")
    lines.append(f"| *chance* | | *{chance['spatial']:.1f}* | *{chance['temporal']:.1f}* |")
    return "\n".join(lines)


def table2_markdown(results: dict, method: str = "BEVT") -> str:
    """Tasks x (normal, single-frame, shuffled) for one method (the paper's Table 2)."""
    lines = [
        "| Task | Normal | Single-frame | Random-shuffling | Chance |",
        "|---|---:|---:|---:|---:|",
    ]
    for task in TASKS:
        normal = _top1(results, method, task)
        cells = [f"{normal:.1f}"]
        for mode in ("single_frame", "shuffled"):
            acc = _top1(results, method, task, mode)
            cells.append(f"{acc:.1f} ↓{normal - acc:.1f}")
        chance = results["data"]["tasks"][task]["chance"]
        lines.append(f"| {TASK_NAMES[task]} | {' | '.join(cells)} | {chance:.1f} |")
    return "\n".join(lines)


def scale_markdown(results: dict) -> str:
    """What was run: model, data, steps, time per phase, seed."""
    model, data, steps = results["model"], results["data"], results["steps"]
    tasks = data["tasks"]
    overrides = ", ".join(f"{k}={v}" for k, v in model["overrides"].items()) or "none"
    rows = [
        ("Seed", str(results["seed"])),
        ("Scale", "quick" if results["quick"] else "full"),
        ("Model", f"Video Swin `{model['flavor']}` flavor (overrides: {overrides}), "
                  f"{model['params'] / 1e6:.2f} M encoder parameters"),
        ("Input", f"{data['frames']} frames x {data['size']} x {data['size']} px; tokenizer view "
                  f"{data['size'] // 2} px, {results['tokenizer']['codebook_size']} codes"),
        ("Images (pretraining)", f"{data['images']} images, {data['image_classes']} classes (labels unused)"),
        ("Videos (pretraining)", f"{data['pretrain_videos']} clips: the training clips of both tasks (labels unused)"),
    ]
    for task in TASKS:
        t = tasks[task]
        rows.append((f"{task.capitalize()} task", f"{t['classes']} classes, {t['train']} training / {t['val']} validation clips"))
    rows += [
        ("Tokenizer steps", str(steps["tokenizer"])),
        ("Pretraining steps", ", ".join(f"{name} {n}" for name, n in steps["pretrain"].items())),
        ("Finetuning steps", f"{steps['finetune']} per method and task"),
        ("Machine", f"{results['machine']['cpus']} CPU cores, torch {results['machine']['torch']}"),
    ]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| Phase | Wall time |", "|---|---:|"]
    for phase in results["phases"]:
        lines.append(f"| {phase['name']} | {_minutes(phase['wall_s'])} |")
    total = sum(p["wall_s"] for p in results["phases"])
    lines.append(f"| **total** | **{_minutes(total)}** |")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


# ----------------------------------------------------------------------------------------------
# Pretraining loss curves
# ----------------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_pretraining_curves(metrics_files: dict[str, str], out_png: Path) -> None:
    """Masked-token loss and accuracy per stream over steps, one line per pretraining run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    for name, path in metrics_files.items():
        rows = read_metrics(path)
        for ax, stream in zip(axes, ("image", "video")):
            points = [(r["step"], r[f"loss_{stream}"]) for r in rows if f"loss_{stream}" in r]
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, label=name)
    for ax, title in zip(axes, ("Masked image modeling (image stream)", "Masked video modeling (video stream)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("masked-token cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def loss_trend(metrics_path: str | Path, stream: str) -> dict:
    """First and last loss, and the relative drop over the last quarter of the run (undertraining)."""
    rows = [r for r in read_metrics(metrics_path) if f"loss_{stream}" in r]
    losses = [r[f"loss_{stream}"] for r in rows]
    accs = [r[f"acc_{stream}"] for r in rows if f"acc_{stream}" in r]
    quarter = max(1, len(losses) // 4)
    # Means over quarters: single logged steps are noisy.
    before = losses[-2 * quarter:-quarter] or losses[:quarter]
    start, end = sum(before) / len(before), sum(losses[-quarter:]) / quarter
    return {
        "first": losses[0],
        "last": end,
        "last_quarter_drop": (start - end) / start if start else 0.0,
        "acc_last": accs[-1] if accs else None,
    }


# ----------------------------------------------------------------------------------------------
# Discussion: every sentence is computed from the results.
# ----------------------------------------------------------------------------------------------


def discussion(results: dict) -> list[str]:
    """Paragraphs: the benchmark's nature (Table 2), what pretraining did (Table 1), and when BEVT
    did not beat the baseline on the temporal task, a diagnosis from the measurements."""
    paragraphs = [_benchmark_nature(results), _pretraining_effect(results)]
    delta, noise = _compare(results, "BEVT", "No pretraining", "temporal")
    if delta <= noise:
        paragraphs.append(_diagnosis(results))
    return paragraphs


def _benchmark_nature(results: dict) -> str:
    task_info = results["data"]["tasks"]
    temporal, spatial = task_info["temporal"], task_info["spatial"]
    t = {mode: _top1(results, "BEVT", "temporal", mode) for mode in MODES}
    s = {mode: _top1(results, "BEVT", "spatial", mode) for mode in MODES}
    band = chance_band(temporal["chance"], temporal["val"])
    text = [f"**Temporal dependency (Table 2).** On the temporal task BEVT's top-1 is {t['normal']:.1f}% "
            f"with all frames, {t['single_frame']:.1f}% with a single frame and {t['shuffled']:.1f}% "
            f"with shuffled frames; chance is {temporal['chance']:.1f}% "
            f"(±{band:.1f} points is the chance spread on {temporal['val']} clips)."]
    if t["normal"] - temporal["chance"] <= band:
        text.append("The model did not learn the temporal task at all, so this run cannot show how much "
                    "the task depends on frame order.")
    else:
        near = [MODE_NAMES[m].lower() for m in ("single_frame", "shuffled") if t[m] - temporal["chance"] <= band]
        far = [MODE_NAMES[m].lower() for m in ("single_frame", "shuffled") if t[m] - temporal["chance"] > band]
        if near:
            text.append(f"{' and '.join(near).capitalize()} accuracy is within the chance spread: "
                        "without the order of the frames the label is gone, as designed.")
        if far:
            text.append(f"{' and '.join(far).capitalize()} accuracy stays above the chance spread, so the "
                        "model found some label information without frame order.")
    drop = max(s["normal"] - s["single_frame"], s["normal"] - s["shuffled"])
    spatial_noise = noise_points(s["normal"], spatial["val"])
    text.append(f"On the spatial task it is {s['normal']:.1f}% / {s['single_frame']:.1f}% / "
                f"{s['shuffled']:.1f}% (normal / single-frame / shuffled): "
                + ("one frame carries the label, like K400 in the paper."
                   if drop <= spatial_noise else
                   f"a drop of {drop:.1f} points, more than the ±{spatial_noise:.1f}-point noise, so the "
                   "model also used motion there."))
    return " ".join(text)


def _pretraining_effect(results: dict) -> str:
    text = ["**Pretraining methods (Table 1).**"]
    for task in TASKS:
        delta, noise = _compare(results, "BEVT", "No pretraining", task)
        text.append(f"On the {task} task BEVT is {_verdict(delta, noise)} than no pretraining "
                    f"({_top1(results, 'BEVT', task):.1f}% vs {_top1(results, 'No pretraining', task):.1f}%, "
                    f"noise ±{noise:.1f}).")
    delta, noise = _compare(results, "BEVT", "BEVT-I", "temporal")
    text.append(f"Adding the video stream to the image-pretrained model (BEVT vs BEVT-I) on the temporal task: "
                f"{_verdict(delta, noise)}.")
    delta, noise = _compare(results, "BEVT", "BEVT-V", "temporal")
    text.append(f"The decoupled design (BEVT vs BEVT-V, video-only from scratch) on the temporal task: "
                f"{_verdict(delta, noise)}.")
    val = results["data"]["tasks"]["temporal"]["val"]
    text.append(f"Noise is two standard errors of a difference of two accuracies on {val} validation clips; "
                f"this is one seed ({results['seed']}), so differences inside it are not findings.")
    return " ".join(text)


def _diagnosis(results: dict) -> str:
    """Why BEVT did not clearly beat the baseline on the temporal task: each check with its numbers."""
    temporal = results["data"]["tasks"]["temporal"]
    band = chance_band(temporal["chance"], temporal["val"])
    checks = []
    accs = {m: _top1(results, m, "temporal") for m in METHODS}
    if all(acc - temporal["chance"] <= band for acc in accs.values()):
        checks.append(f"No method learned the temporal task (all within {band:.1f} points of chance "
                      f"{temporal['chance']:.1f}%): the finetuning budget ({results['steps']['finetune']} steps) "
                      "is too small to show any effect of pretraining.")
    baseline = accs["No pretraining"]
    if baseline >= 100 - noise_points(baseline, temporal["val"]):
        checks.append(f"The baseline already reaches {baseline:.1f}%: the task saturates at this size, "
                      "leaving no room for pretraining to help.")
    for name in ("BEVT", "BEVT-V"):
        trend = results["pretrain"][name]["video_trend"]
        steps = results["steps"]["pretrain"][name]
        state = ("still falling" if trend["last_quarter_drop"] > 0.03 else "flat")
        checks.append(f"{name}'s masked-video loss went from {trend['first']:.2f} to {trend['last']:.2f} in "
                      f"{steps} steps and is {state} ({100 * trend['last_quarter_drop']:.1f}% lower over the "
                      "last quarter)" + (": more pretraining steps would likely help." if state != "flat" else "."))
    tokens = results.get("tokens")
    if tokens:
        video_acc = results["pretrain"]["BEVT"]["video_trend"]["acc_last"]
        if video_acc is not None:
            checks.append(f"BEVT's masked-video token accuracy ends at {100 * video_acc:.1f}%, against "
                          f"{100 * tokens['top_token_share']:.1f}% for always predicting the most frequent token "
                          f"and {100 * tokens['copy_accuracy']:.1f}% for copying the token at the same place from "
                          "the nearest unmasked frame"
                          + (": the model learned little beyond these shortcuts." if video_acc <= max(
                              tokens["top_token_share"], tokens["copy_accuracy"]) + 0.02 else "."))
        checks.append(f"Only {100 * tokens['change_rate']:.1f}% of tokenizer targets change from one frame to "
                      f"the next on temporal-task clips ({tokens['codes_used']} of {tokens['codebook_size']} codes "
                      "in use)" + (": the video targets are mostly static appearance, so predicting them "
                                   "teaches little about motion." if tokens["change_rate"] < 0.2 else
                                   ": the targets do carry motion."))
    finetune_train = results.get("finetune_train_acc", {})
    if "No pretraining" in finetune_train:
        train_acc = finetune_train["No pretraining"]["temporal"]
        checks.append(f"Without pretraining the temporal model reaches {train_acc:.1f}% on its training clips "
                      f"and {baseline:.1f}% on validation"
                      + (" (overfitting: more data or a prior should help)." if train_acc - baseline > 15
                         else " (it underfits: finetuning, not the initialisation, is the bottleneck)."
                         if train_acc < 70 else "."))
    return ("**Why BEVT did not beat the baseline on the temporal task here.** Measured in this run "
            f"(seed {results['seed']}):\n\n" + "\n".join(f"- {c}" for c in checks))


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def write_report(results: dict, out_dir: Path) -> Path:
    """DIR/report.md (figures next to it, referenced by relative path)."""
    figures = "\n\n".join(f"![{caption}]({name})\n\n*{caption}*" for name, caption in results["figures"].items())
    command = "bevt demo" + (" --quick" if results["quick"] else "") + f" --seed {results['seed']}"
    text = f"""# BEVT in miniature: the paper's Tables 1 and 2 on the built-in synthetic benchmark

`{command}` pretrained a small Video Swin Transformer three ways — image stream only (BEVT-I),
both streams initialised from BEVT-I (BEVT), video stream only from scratch (BEVT-V) — and
finetuned those and a randomly initialised baseline on two tasks of the built-in benchmark: a
*spatial* task, where the class is the appearance of the clip, and a *temporal* task, where the
class is only the motion and its order. Targets of the masked modeling are the tokens of a VQ
tokenizer trained on the benchmark's images in the first phase.

## Scale of the run

{scale_markdown(results)}

## Table 1: pretraining methods (top-1 %, single view)

{table1_markdown(results)}

## Table 2: temporal dependency of the tasks (BEVT, top-1 %)

Single-frame: every frame replaced by one random frame of the clip. Random-shuffling: the frames
in a random order.

{table2_markdown(results)}

## Pretraining

![Pretraining loss curves]({LOSS_CURVES_PNG})

*Masked-token cross-entropy over pretraining steps, per stream and run.*

## Masks and token reconstructions

{figures}

## Discussion

{chr(10).join(p + chr(10) for p in discussion(results))}
"""
    path = out_dir / "report.md"
    path.write_text(text)
    return path
