"""The demo's report: tables with their uncertainty, the paper's comparisons with intervals, curves.

Pure functions of the `results` dict that `bevt.demo` writes to results.json, so the report can be
rebuilt (and tested) without training anything. Accuracies are top-1 in percent. The report
states numbers and intervals; the only reading it adds is the one an interval supports (stats.py:
an ordering when the interval excludes 0, "not resolved at this scale" when it does not).
"""

from __future__ import annotations

from pathlib import Path

from bevt.demo.stats import mean_and_sd, paired_difference, verdict
from bevt.eval.visualize import pyplot
from bevt.train.logging import read_metrics

METHODS = ("No pretraining", "BEVT-I", "BEVT-V", "BEVT")
PRETRAIN_DATA = {"No pretraining": "-", "BEVT-I": "images", "BEVT-V": "videos", "BEVT": "images + videos"}
TASKS = ("spatial", "temporal")
MODES = ("normal", "single_frame", "shuffled")
MODE_NAMES = {"normal": "Normal", "single_frame": "Single-frame", "shuffled": "Random-shuffling"}
TASK_NAMES = {"spatial": "Spatial (appearance, like K400)", "temporal": "Temporal (motion, like SSv2)"}
KIND_NAMES = {"finetune": "finetuning", "probe": "linear probe on frozen features"}
LOSS_CURVES_PNG = "pretraining_curves.png"
# The comparisons the paper makes: joint vs image-only on motion, joint vs video-only on
# appearance, and each pretraining against none.
COMPARISONS = (("BEVT", "BEVT-I", "temporal"), ("BEVT", "BEVT-V", "spatial"),
               *((method, "No pretraining", task) for method in ("BEVT-I", "BEVT-V", "BEVT") for task in TASKS))


def seeds_of(results: dict, kind: str) -> list[str]:
    return list(results[kind])


def correct(results: dict, kind: str, method: str, task: str, mode: str = "normal") -> list[list[int]]:
    """(seeds, clips) 0/1 correctness of `method` on `task`'s validation clips."""
    return [results[kind][seed][method][task][mode] for seed in seeds_of(results, kind)]


def accuracies(results: dict, kind: str, method: str, task: str, mode: str = "normal") -> list[float]:
    """Top-1 per seed."""
    return [100 * sum(row) / len(row) for row in correct(results, kind, method, task, mode)]


def mean_sd(values: list[float]) -> str:
    mean, sd = mean_and_sd(values)
    return f"{mean:.1f} ± {sd:.1f}" if len(values) > 1 else f"{mean:.1f}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def interval_text(interval: dict) -> str:
    return f"{interval['difference']:+.1f} [{interval['low']:+.1f}, {interval['high']:+.1f}]"


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def table1_markdown(results: dict, kind: str) -> str:
    """Methods x tasks, normal top-1 mean ± sd over seeds (the paper's Table 1)."""
    chance = {task: results["data"]["tasks"][task]["chance"] for task in TASKS}
    lines = ["| Method | Pretraining data | Spatial top-1 | Temporal top-1 |", "|---|---|---:|---:|"]
    for method in METHODS:
        cells = " | ".join(mean_sd(accuracies(results, kind, method, task)) for task in TASKS)
        lines.append(f"| {method} | {PRETRAIN_DATA[method]} | {cells} |")
    lines.append(f"| *chance* | | *{chance['spatial']:.1f}* | *{chance['temporal']:.1f}* |")
    return "\n".join(lines)


def comparison_rows(results: dict, kind: str) -> list[dict]:
    rows = []
    for a, b, task in COMPARISONS:
        interval = paired_difference(correct(results, kind, a, task), correct(results, kind, b, task))
        rows.append({"a": a, "b": b, "task": task, **interval, "verdict": verdict(interval, a, b)})
    return rows


def comparison_markdown(results: dict, kind: str) -> str:
    """The paper's comparisons: mean difference of top-1 (points) with its 95% interval."""
    lines = ["| Comparison | Task | Difference [95% interval] | Sd over seeds | Reading |", "|---|---|---:|---:|---|"]
    for row in comparison_rows(results, kind):
        lines.append(f"| {row['a']} - {row['b']} | {row['task']} | {interval_text(row)} | {row['seed_sd']:.1f} | "
                     f"{row['verdict']} |")
    return "\n".join(lines)


# The paper's findings the demo can test, each as (finding, A, B, task, mode of B): the paper
# says A > B; "mode" compares a method's normal accuracy with its single-frame / shuffled one.
PAPER_FINDINGS = (
    ("The video stream helps motion: BEVT > BEVT-I on SSv2 (+1.4) and Diving48 (+5.5)", "BEVT", "BEVT-I", "temporal",
     "normal"),
    ("The image stream helps appearance: BEVT > BEVT-V on K400 (+4.4)", "BEVT", "BEVT-V", "spatial", "normal"),
    ("Decoupled design: BEVT > BEVT-V on SSv2 (+3.5)", "BEVT", "BEVT-V", "temporal", "normal"),
    ("Motion datasets need frame order: SSv2 drops 60.0 with a single frame", "BEVT", "BEVT", "temporal",
     "single_frame"),
    ("... and 47.3 with shuffled frames", "BEVT", "BEVT", "temporal", "shuffled"),
)


def findings_markdown(results: dict, kind: str) -> str:
    """Each testable finding of the paper against the demo's interval: reproduced (the interval
    excludes 0 on the paper's side), contradicted (on the other side), or not resolved."""
    lines = ["| Paper | Demo: difference [95% interval] | Reading |", "|---|---:|---|"]
    for finding, a, b, task, mode in PAPER_FINDINGS:
        interval = paired_difference(correct(results, kind, a, task), correct(results, kind, b, task, mode))
        what = f"{a} - {b}" if mode == "normal" else f"{a} normal - {MODE_NAMES[mode].lower()}"
        if interval["seeds"] < 2:  # seed noise unmeasured
            reading = "one seed: not resolved"
        elif interval["low"] > 0:
            reading = "reproduced"
        elif interval["high"] < 0:
            reading = "contradicted"
        else:
            reading = "not resolved at this scale"
        lines.append(f"| {finding} | {what}, {task} task: {interval_text(interval)} | {reading} |")
    return "\n".join(lines)


def table2_markdown(results: dict, kind: str) -> str:
    """(method, task) x (normal, single-frame, shuffled): mean ± sd over seeds, and the drop
    from normal with its 95% interval (the paper's Table 2, for every method)."""
    lines = ["| Method | Task | Normal | Single-frame | Random-shuffling | Drop, single-frame | Drop, shuffled | Chance |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in METHODS:
        for task in TASKS:
            cells = [mean_sd(accuracies(results, kind, method, task, mode)) for mode in MODES]
            normal = correct(results, kind, method, task)
            for mode in MODES[1:]:
                cells.append(interval_text(paired_difference(normal, correct(results, kind, method, task, mode))))
            chance = results["data"]["tasks"][task]["chance"]
            lines.append(f"| {method} | {TASK_NAMES[task]} | {' | '.join(cells)} | {chance:.1f} |")
    return "\n".join(lines)


def tables(results: dict) -> list[tuple[str, str]]:
    """(title, markdown) of every table, linear probe first (it exists for every seed)."""
    out = []
    for kind in ("probe", "finetune"):
        if not results[kind]:
            continue
        seeds = count(len(results[kind]), "seed")
        out += [(f"Table 1, {KIND_NAMES[kind]} (top-1 %, mean ± sd over {seeds})", table1_markdown(results, kind)),
                (f"Comparisons, {KIND_NAMES[kind]} (top-1 points, {seeds})", comparison_markdown(results, kind)),
                (f"Table 2, {KIND_NAMES[kind]} (top-1 %, {seeds})", table2_markdown(results, kind)),
                (f"The paper's findings, {KIND_NAMES[kind]} ({seeds})", findings_markdown(results, kind))]
    return out


def scale_markdown(results: dict) -> str:
    """What was run: model, data, steps, seeds, time per phase."""
    model, data, steps, batch = results["model"], results["data"], results["steps"], results["batch"]
    tokenizer = results["tokenizer"]
    rows = [
        ("Seeds", f"{', '.join(map(str, results['seeds']))} (pretraining and linear probes); finetuning: "
                  f"{', '.join(map(str, results['finetune_seeds'])) or 'none'}"),
        ("Fixed across seeds", f"the benchmark and the tokenizer (data seed {results['data_seed']})"),
        ("Scale", "`--quick`" if results["quick"] else "full"),
        ("Model", f"Video Swin, `{model['flavor']}` flavor: {model['params'] / 1e6:.2f} M encoder parameters"),
        ("Input", f"{data['frames']} frames x {data['size']} x {data['size']} px, one centre view at test time"),
        ("Tokenizer", f"VQ, {tokenizer['codebook_size']} codes on {data['size'] // 2}-px views, "
                      f"{steps['tokenizer']} steps: {tokenizer['psnr_db']:.1f} dB PSNR, "
                      f"{100 * tokenizer['codes_used']:.0f}% of codes used per batch"),
        ("Image set", f"{data['images']} images of {data['image_classes']} classes (labels unused)"),
        ("Video pretraining pool", f"{data['pretrain_videos']} clips: every training clip of both tasks "
                                   "(labels unused)"),
    ]
    for task in TASKS:
        t = data["tasks"][task]
        rows.append((f"{task.capitalize()} task", f"{t['classes']} classes; {t['labelled']} labelled training "
                                                  f"clips (of the {t['pool']} in the pool), {t['val']} validation "
                                                  "clips"))
    rows.append(("Pretraining steps", ", ".join(f"{name} {n}" for name, n in steps["pretrain"].items())
                 + f" (batches of {batch['images']} images and/or {batch['clips']} clips)"))
    if steps["finetune"]:
        rows += [("Finetuning steps", ", ".join(f"{n} on the {task} task" for task, n in steps["finetune"].items())
                  + f" per method (batches of {batch['finetune_clips']} clips)"),
                 ("Finetuning lr", ", ".join(f"{m} {lr:g}" for m, lr in results["finetune_lr"].items()))]
    rows += [("Linear probe", "multinomial logistic regression (L2 1e-3) on standardised frozen features of the "
                              "labelled clips, full-batch L-BFGS (`bevt evaluate --linear-probe`)"),
             ("Machine", f"{results['machine']['cpus']} CPU cores, torch {results['machine']['torch']}")]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| Phase | Wall time | CPU time |", "|---|---:|---:|"]
    for phase in results["phases"]:
        lines.append(f"| {phase['name']} | {minutes(phase['wall_s'])} | {phase.get('cpu_s', 0):.0f} s |")
    wall = sum(p["wall_s"] for p in results["phases"])
    cpu = sum(p.get("cpu_s", 0) for p in results["phases"])
    lines.append(f"| **total** | **{minutes(wall)}** | **{cpu:.0f} s** |")
    return "\n".join(lines)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


# ----------------------------------------------------------------------------------------------
# Pretraining loss curves
# ----------------------------------------------------------------------------------------------


def plot_pretraining_curves(run_dirs: dict[str, str], out_png: Path, step_offsets: dict[str, int]) -> None:
    """Masked-token loss per stream over steps, one line per pretraining run; a run initialised
    from another starts at that run's last step (BEVT continues BEVT-I)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        offset = step_offsets.get(name, 0)
        for ax, stream in zip(axes, ("image", "video")):
            points = [(offset + r["step"], r[f"loss_{stream}"]) for r in rows if f"loss_{stream}" in r]
            if points:
                ax.plot(*zip(*points), label=name)
    for ax, title in zip(axes, ("Masked image modeling (image stream)", "Masked video modeling (video stream)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("masked-token cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def last_loss(run_dir: str | Path, stream: str) -> dict:
    """Masked-token loss and accuracy of a stream, averaged over the last quarter of the logged steps."""
    rows = [r for r in read_metrics(run_dir) if f"loss_{stream}" in r]
    tail = rows[-max(1, len(rows) // 4):]
    return {"loss": sum(r[f"loss_{stream}"] for r in tail) / len(tail),
            "acc": sum(r.get(f"acc_{stream}", 0.0) for r in tail) / len(tail)}


def pretraining_markdown(results: dict) -> str:
    """Final masked-token loss / accuracy per run, mean ± sd over seeds."""
    lines = ["| Run | Stream | Loss (last quarter) | Masked-token accuracy |", "|---|---|---:|---:|"]
    first = next(iter(results["pretrain"].values()))
    for name, streams in first.items():
        for key in streams:
            values = [runs[name][key] for runs in results["pretrain"].values()]
            lines.append(f"| {name} | {key.removesuffix('_loss')} | {mean_sd([v['loss'] for v in values])} | "
                         f"{mean_sd([100 * v['acc'] for v in values])} % |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

READING = """Each accuracy is the mean ± sample standard deviation over the seeds. A difference is the
mean over seeds of the paired per-clip difference of two methods on the same validation clips;
its 95% interval (`bevt/demo/stats.py`) holds both the seed-to-seed spread and the noise of a
finite validation set (a t-interval over seeds whose variance also holds the validation set's
share). The reading column says what the interval supports: an ordering when it excludes 0,
otherwise "not resolved at this scale". With one seed an interval holds validation noise only, so
no ordering is read from it."""


def write_report(results: dict, out_dir: Path) -> Path:
    """DIR/report.md (figures next to it, referenced by relative path)."""
    figures = "\n\n".join(f"![{name.removesuffix('.png').replace('_', ' ')}]({name})\n\n*{caption}*"
                            for name, caption in results["figures"].items())
    seeds = ",".join(map(str, results["seeds"]))
    command = ("bevt demo" + (" --quick" if results["quick"] else "") + f" --seeds {seeds}"
               + f" --finetune-seeds {len(results['finetune_seeds'])}")
    sections = "\n\n".join(f"## {title}\n\n{table}" for title, table in tables(results))
    text = f"""# BEVT in miniature: the paper's Tables 1 and 2 on the built-in synthetic benchmark

`{command}` pretrained a small Video Swin Transformer three ways — image stream only (BEVT-I),
both streams initialised from BEVT-I (BEVT), video stream only from scratch (BEVT-V) — once per
seed, then read each encoder (and a randomly initialised one) with a linear probe on frozen
features, and finetuned them for the finetuning seeds, on two tasks of the built-in benchmark:
a *spatial* task, where the class is the appearance of the clip, and a *temporal* task, where
the class is only the motion and its order. Single-frame: every frame replaced by one random
frame of the clip. Random-shuffling: the frames in a random order.

## Scale of the run

{scale_markdown(results)}

## How to read the numbers

{READING}

{sections}

## Pretraining

{pretraining_markdown(results)}

![Pretraining loss curves]({LOSS_CURVES_PNG})

*Masked-token cross-entropy over pretraining steps, per stream and run (seed {results['seeds'][0]});
BEVT starts where BEVT-I ended, since it is initialised from it.*

## Masks and token reconstructions

{figures}
"""
    path = out_dir / "report.md"
    path.write_text(text)
    return path
