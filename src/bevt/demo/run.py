"""`bevt demo`: the paper's Tables 1 and 2 in miniature, on the built-in synthetic benchmark, over seeds.

One process runs every phase by calling the library, as a user would chain the verbs:
1. the benchmark (`bevt synth`) and a VQ tokenizer trained on its images (the pretraining
   targets). Both are made once, with data seed 0, and stay fixed across the training seeds, as
   the paper's datasets and its DALL-E tokenizer do;
2. for every seed: pretraining of BEVT-I (image stream), BEVT (joint, initialised from BEVT-I)
   and BEVT-V (video stream from scratch) with the `demo_pretrain` recipe, on an unlabelled video
   pool (every training clip of both tasks) larger than the labelled sets;
3. for every seed: a linear probe of each frozen encoder (and of a randomly initialised one) on
   each task's labelled clips, scored normal / single-frame / shuffled on its validation clips;
4. for the first `finetune_seeds` seeds: finetuning of the three and of a randomly initialised
   baseline on each task's labelled clips (`demo_finetune`), scored the same way;
5. figures, DIR/report.md and DIR/results.json (report.py), with spreads over seeds and paired
   intervals (stats.py).

Every phase records its outputs in DIR/results.json; a rerun of the same scale reuses the phases
already finished there (also those of other seeds), so an interrupted demo continues where it
stopped and more seeds can be added later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import bevt
from bevt.config import config_to_dict, load_config, read_recipe
from bevt.data.datasets import load_annotations
from bevt.data.synthetic import make_synthetic_benchmark
from bevt.demo import report as demo_report
from bevt.demo.report import METHODS, MODES, TASKS
from bevt.errors import DataError, UsageError
from bevt.eval.embed import load_encoder, view_outputs
from bevt.eval.linear_probe import probe_features
from bevt.eval.visualize import visualize_file
from bevt.models import create_model
from bevt.models.build import load_model_from_checkpoint
from bevt.train.logging import read_metrics
from bevt.train.main import train, train_tokenizer as train_tokenizer_run

# Pretraining runs: name -> (streams, the run it is initialised from).
PRETRAIN_RUNS = {"BEVT-I": ("image", None), "BEVT": ("joint", "BEVT-I"), "BEVT-V": ("video", None)}
# Finetuning and probing: method -> the pretraining run its encoder starts from (None: random init).
ENCODER_OF = {"No pretraining": None, "BEVT-I": "BEVT-I", "BEVT-V": "BEVT-V", "BEVT": "BEVT"}
PRETRAIN_RECIPE, FINETUNE_RECIPE = "demo_pretrain", "demo_finetune"
WARMUP_SHARE = 0.1  # of every pretraining and finetuning run
# Finetuning lr of the no-pretraining baseline; the recipe's lower lr is for pretrained models,
# whose features a from-scratch lr destroys (numbers in docs/notes/demo.md)
SCRATCH_LR = 1e-3
DATA_SEED = 0  # the benchmark and the tokenizer: the same for every training seed


@dataclass(frozen=True)
class DemoScale:
    """What sets a demo's size, and so its time on a 2-core CPU. Run lengths are optimizer steps
    (the recipes' batches: 32 images and/or 8 clips per step)."""

    size: int  # frame side of the benchmark and the model input; the tokenizer sees half
    frames: int  # frames per video, and per clip
    images_per_class: int  # 8 appearance classes
    videos_per_class: int  # unlabelled pretraining clips per class and task (8 spatial, 6 temporal classes)
    labelled_per_class: int  # of those, the first ones per class carry labels (finetuning, probe fitting)
    val_videos_per_class: int
    tokenizer_steps: int
    codebook_size: int
    pretrain_steps: dict[str, int]
    finetune_steps: dict[str, int]  # per task: learning motion from scratch takes longer
    seeds: tuple[int, ...]  # default training seeds
    finetune_seeds: int  # default number of them (the first ones) that are also finetuned


QUICK = DemoScale(
    size=64, frames=8, images_per_class=16, videos_per_class=12, labelled_per_class=8, val_videos_per_class=8,
    tokenizer_steps=60, codebook_size=32,
    pretrain_steps={"BEVT-I": 15, "BEVT": 10, "BEVT-V": 10}, finetune_steps={"spatial": 15, "temporal": 15},
    seeds=(0, 1), finetune_seeds=1,
)
FULL = DemoScale(
    size=64, frames=8, images_per_class=150, videos_per_class=96, labelled_per_class=48, val_videos_per_class=40,
    tokenizer_steps=600, codebook_size=32,
    pretrain_steps={"BEVT-I": 200, "BEVT": 150, "BEVT-V": 150},
    finetune_steps={"spatial": 240, "temporal": 640},
    seeds=(0, 1, 2), finetune_seeds=1,
)


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UsageError(f"--seeds {text!r}: give distinct seeds")
    return seeds


def run_demo(args) -> int:
    """CLI entry: `bevt demo [--quick] [--out DIR] [--seeds 0,1,2] [--finetune-seeds N]`."""
    scale = QUICK if args.quick else FULL
    seeds = parse_seeds(args.seeds) if args.seeds else scale.seeds
    finetune_seeds = scale.finetune_seeds if args.finetune_seeds is None else args.finetune_seeds
    if not 0 <= finetune_seeds <= len(seeds):
        raise UsageError(f"--finetune-seeds {finetune_seeds}: must be between 0 and the {len(seeds)} seeds")
    results = run_all(Path(args.out), scale, seeds, finetune_seeds, quick=args.quick)
    for title, table in demo_report.tables(results):
        print(f"\n{title}\n\n{table}")
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def run_all(out: Path, scale: DemoScale, seeds: tuple[int, ...], finetune_seeds: int, quick: bool) -> dict:
    """Every phase of the demo in `out`; returns the results dict the report is written from."""
    # Compute on all cores but one, which the recipes' data worker gets. On a 2-core machine
    # this also keeps the tiny model's many small ops from stalling on a second compute thread
    # whenever another process takes a core (measured: 10x slower steps with 2 threads then).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    out.mkdir(parents=True, exist_ok=True)
    # A finished phase is reused only by the same demo scale and bevt version.
    settings = {"scale": dataclasses.asdict(scale), "bevt": bevt.__version__}
    finetuned_seeds = seeds[:finetune_seeds]
    per_seed = len(PRETRAIN_RUNS) + 1
    phases = PhaseRunner(out, settings, total=2 + per_seed * len(seeds) + len(finetuned_seeds) * len(METHODS) + 2)

    bench = phases.run("benchmark", "benchmark", lambda d: make_benchmark(d, scale))
    tokenizer = phases.run("tokenizer", "tokenizer", lambda d: train_tokenizer(d, bench, scale))
    pretrained, probes, finetuned = {}, {}, {}
    for seed in seeds:
        runs = {}
        for name, (streams, init) in PRETRAIN_RUNS.items():
            init_from = runs[init]["checkpoint"] if init else None
            runs[name] = phases.run(
                f"seed {seed}: pretrain {name} ({streams} stream{'s' if streams == 'joint' else ''})",
                f"seed{seed}/pretrain/{name}",
                lambda d, streams=streams, init_from=init_from, name=name: pretrain(
                    d, streams, init_from, bench, tokenizer, scale.pretrain_steps[name], seed),
            )
        pretrained[seed] = runs
        probes[seed] = phases.run(f"seed {seed}: linear probes of the frozen encoders", None,
                                  lambda: probe_encoders(runs, bench, seed))
    for seed in finetuned_seeds:
        finetuned[seed] = {}
        for method, init in ENCODER_OF.items():
            init_from = pretrained[seed][init]["checkpoint"] if init else None
            overrides = () if init_from else (setting("optim.lr", SCRATCH_LR),)
            finetuned[seed][method] = phases.run(
                f"seed {seed}: finetune + evaluate {method} on both tasks", f"seed{seed}/finetune/{method}",
                lambda d, init_from=init_from, overrides=overrides: {task: finetune(
                    d / task, task, init_from, bench, scale.finetune_steps[task], seed, overrides) for task in TASKS},
            )
    results = collect_results(scale, seeds, quick, bench, tokenizer, pretrained, probes, finetuned)
    results["figures"] = phases.run("figures", None, lambda: write_figures(out, pretrained[seeds[0]], bench,
                                                                           seeds[0]), reuse=False)
    results["phases"] = phases.timings
    demo_report.write_report(results, out)
    phases.save(results=results)
    return results


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (data workers, benchmark writers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class PhaseRunner:
    """Runs the demo's phases in order with a one-line progress display, times them (wall and
    CPU), and keeps their outputs in DIR/results.json so a rerun with the same settings skips
    finished ones."""

    def __init__(self, out: Path, settings: dict, total: int):
        self.out = out
        self.settings = json.loads(json.dumps(settings))  # as results.json holds them: tuples become lists
        self.total = total
        self.path = out / "results.json"
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        same = previous.get("settings") == self.settings
        self.previous_outputs = previous.get("outputs", {}) if same else {}
        self.previous_timings = {p["name"]: p for p in previous.get("phases", [])} if same else {}
        self.outputs: dict[str, dict] = {}
        self.timings: list[dict] = []

    def run(self, name: str, folder: str | None, work, reuse: bool = True) -> dict:
        """`work(DIR/folder)` (or `work()` without a folder) -> dict, unless an earlier run with
        these settings finished it."""
        number = f"[{len(self.timings) + 1:2d}/{self.total}]"
        if reuse and name in self.previous_outputs:
            output, timing = self.previous_outputs[name], self.previous_timings[name]
            wall, cpu = timing["wall_s"], timing.get("cpu_s", 0.0)
            print(f"{number} {name}: done by an earlier run in {self.out}, reused", flush=True)
        else:
            print(f"{number} {name} ...", flush=True)
            started, cpu_started = time.perf_counter(), cpu_seconds()
            if folder is None:
                output = work()
            else:
                directory = self.out / folder
                shutil.rmtree(directory, ignore_errors=True)  # a phase cut short leaves partial files
                directory.mkdir(parents=True)
                output = work(directory)
            wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
            print(f"{number} {name}: {demo_report.minutes(wall)} ({cpu:.0f} CPU-s)", flush=True)
        self.outputs[name] = output
        self.timings.append({"name": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
        self.save()
        return output

    def save(self, **extra) -> None:
        state = {"settings": self.settings, "phases": self.timings,
                 "outputs": {**self.previous_outputs, **self.outputs}, **extra}
        self.path.write_text(json.dumps(state) + "\n")


# ----------------------------------------------------------------------------------------------
# Phases. Each returns a JSON-serialisable dict (paths as strings).
# ----------------------------------------------------------------------------------------------


def make_benchmark(directory: Path, scale: DemoScale) -> dict:
    """The synthetic benchmark; the unlabelled video pool (both tasks' training clips, like
    K400 for the paper, used without labels); and per task the labelled training subset, the
    first `labelled_per_class` clips of each class."""
    paths = make_synthetic_benchmark(
        str(directory / "data"), seed=DATA_SEED, size=scale.size, frames=scale.frames,
        images_per_class=scale.images_per_class, val_images_per_class=2, videos_per_class=scale.videos_per_class,
        val_videos_per_class=scale.val_videos_per_class, workers=os.cpu_count() or 1,
    )
    pool = directory / "pretrain_videos.txt"
    labelled = {}
    with pool.open("w") as merged:
        for task in TASKS:
            samples = load_annotations(paths[f"{task}_train"]).samples
            merged.writelines(f"{sample.path} 0\n" for sample in samples)
            classes = paths[f"{task}_num_classes"]
            labelled[task] = str(directory / f"{task}_labelled.txt")
            Path(labelled[task]).write_text(
                "".join(f"{s.path} {s.label}\n" for s in samples[: scale.labelled_per_class * classes]))
    counts = json.loads(Path(paths["manifest"]).read_text())["counts"]
    for task in TASKS:
        counts[f"{task}_labelled"] = scale.labelled_per_class * paths[f"{task}_num_classes"]
    return {"paths": paths, "pretrain_videos": str(pool), "labelled": labelled, "counts": counts,
            "data_seed": DATA_SEED}


def train_tokenizer(directory: Path, bench: dict, scale: DemoScale) -> dict:
    """bevt's VQ tokenizer on the benchmark's training images, by the one training loop."""
    overrides = [
        setting("data.images", bench["paths"]["images_train"]), setting("run.out", str(directory)),
        setting("data.size", scale.size), setting("data.short_side", [scale.size, scale.size + scale.size // 4]),
        setting("vq.width", 32), setting("vq.codebook_size", scale.codebook_size), setting("data.workers", 0),
        setting("run.seed", DATA_SEED), setting("run.device", "cpu"),
        setting("run.checkpoint_every", scale.tokenizer_steps),
        setting("run.log_every", max(1, scale.tokenizer_steps // 20)),
        *run_length("tokenizer_vq", scale.tokenizer_steps, bench["counts"]["images_train"], "image_batch_size"),
        setting("optim.warmup_epochs", 0),
    ]
    train_tokenizer_run(load_config("tokenizer_vq", overrides))
    last = read_metrics(directory)[-1]
    return {"path": str(directory), "codebook_size": scale.codebook_size, "psnr_db": last["psnr"],
            "codes_used": last["codes_used"]}


def setting(key: str, value) -> str:
    """A `key=value` override; JSON is valid YAML, so paths with any characters survive."""
    return f"{key}={json.dumps(value)}"


def run_length(recipe: str, steps: int, samples: int, batch_key: str) -> list[str]:
    """Overrides for a run of `steps` optimizer steps over `samples` (the loop counts epochs of
    full batches); warm-up is a fixed share of every run."""
    batch = read_recipe(recipe)["data"][batch_key]
    if samples < batch:
        raise DataError(f"{samples} samples make no batch of {batch} (data.{batch_key} of {recipe}); "
                        "use a larger demo scale")
    epochs = steps / (samples // batch)
    return [setting("optim.epochs", epochs), setting("optim.warmup_epochs", WARMUP_SHARE * epochs)]


def pretrain(directory: Path, streams: str, init_from: str | None, bench: dict, tokenizer: dict,
             steps: int, seed: int) -> dict:
    counts = bench["counts"]
    if streams == "image":  # the main stream, whose epochs the run counts
        length = run_length(PRETRAIN_RECIPE, steps, counts["images_train"], "image_batch_size")
    else:
        videos = counts["spatial_train"] + counts["temporal_train"]
        length = run_length(PRETRAIN_RECIPE, steps, videos, "video_batch_size")
    overrides = [
        setting("pretrain.streams", streams), setting("tokenizer.path", tokenizer["path"]),
        setting("data.images", bench["paths"]["images_train"]), setting("data.train", bench["pretrain_videos"]),
        *length, setting("run.out", str(directory)), setting("run.seed", seed), setting("run.init_from", init_from),
    ]
    cfg = load_config(PRETRAIN_RECIPE, overrides)
    checkpoint = train(cfg)
    return {"checkpoint": str(checkpoint), "run": str(directory), "streams": streams,
            "steps": read_metrics(directory)[-1]["step"], "config": config_to_dict(cfg)}


def task_config(bench: dict, task: str, overrides: list[str] | tuple[str, ...] = ()):
    """The `demo_finetune` config of `task`: labelled training clips, validation clips, views."""
    paths = bench["paths"]
    return load_config(FINETUNE_RECIPE, [
        setting("data.train", bench["labelled"][task]), setting("data.val", paths[f"{task}_val"]),
        setting("data.flip", task == "spatial"), setting("finetune.num_classes", paths[f"{task}_num_classes"]),
        *overrides,
    ])


def correctness(fn, cfg, seed: int, modes=MODES) -> dict:
    """Per validation clip and test mode, whether `fn`'s (N,K) scores rank the label first."""
    samples = load_annotations(cfg.data.val).samples
    out = view_outputs(fn, samples, cfg, modes, seed=seed)
    return {mode: (scores.argmax(1) == out["labels"]).int().tolist() for mode, scores in out["outputs"].items()}


def finetune(directory: Path, task: str, init_from: str | None, bench: dict, steps: int, seed: int,
             overrides: tuple[str, ...] = ()) -> dict:
    """Finetune on `task`'s labelled clips, then score each validation clip normal, single-frame
    and shuffled (one centre view, as `bevt evaluate` with the recipe's views)."""
    cfg = task_config(bench, task, [
        *run_length(FINETUNE_RECIPE, steps, bench["counts"][f"{task}_labelled"], "video_batch_size"),
        setting("run.out", str(directory)), setting("run.seed", seed), setting("run.init_from", init_from), *overrides,
    ])
    checkpoint = train(cfg)
    model, _ = load_model_from_checkpoint(checkpoint)
    rows = read_metrics(directory)
    last_quarter = rows[-max(1, len(rows) // 4):]
    return {
        "steps": rows[-1]["step"],
        "lr": cfg.optim.lr,
        "train_acc": 100 * sum(row["acc"] for row in last_quarter) / len(last_quarter),
        "correct": correctness(lambda clips: model(clips).softmax(-1), cfg, seed),
    }


def probe_encoders(runs: dict, bench: dict, seed: int) -> dict:
    """{method: {task: {"train_top1", "correct": {mode: [0/1 per validation clip]}}}}: a linear
    probe (eval/linear_probe.py) of each frozen encoder, a randomly initialised one included."""
    out = {}
    for method, init in ENCODER_OF.items():
        if init is None:
            torch.manual_seed(seed)
            encoder = create_model(runs["BEVT"]["config"]["model"]["name"]).eval()
        else:
            encoder, _ = load_encoder(runs[init]["checkpoint"])
        out[method] = {}
        for task in TASKS:
            # decoding in this process: the sets are small, a worker's start-up would cost more
            cfg = task_config(bench, task, [setting("data.workers", 0)])
            train_set = view_outputs(encoder, load_annotations(cfg.data.train).samples, cfg, seed=seed)
            val_set = view_outputs(encoder, load_annotations(cfg.data.val).samples, cfg, MODES, seed=seed)
            probe = probe_features(train_set, val_set, cfg.finetune.num_classes)
            out[method][task] = {"train_top1": probe["train_top1"],
                                 "correct": {mode: [int(c) for c in r["correct"]]
                                             for mode, r in probe["results"].items()}}
    return out


def write_figures(out: Path, pretrained: dict, bench: dict, seed: int) -> dict[str, str]:
    """Pretraining loss curves, and masks with token reconstructions of the BEVT model on a
    temporal-task validation clip and a held-out image; -> {PNG name: caption} of the latter."""
    offsets = {name: pretrained[init]["steps"] for name, (_, init) in PRETRAIN_RUNS.items() if init}
    demo_report.plot_pretraining_curves({name: run["run"] for name, run in pretrained.items()},
                                        out / demo_report.LOSS_CURVES_PNG, offsets)
    clip = load_annotations(bench["paths"]["temporal_val"]).samples[0].path
    image = load_annotations(bench["paths"]["images_val"]).samples[0].path
    figures = {}
    for name, source, what in (("masked_video.png", clip, "a temporal-task validation clip"),
                               ("masked_image.png", image, "a held-out image")):
        accuracy = visualize_file(source, out / name, checkpoint=pretrained["BEVT"]["checkpoint"], seed=seed)
        figures[name] = (f"BEVT (seed {seed}) on {what}: the input, the mask (tube masking for clips, "
                         "blockwise for images), the tokenizer's reconstruction of the true tokens, the "
                         "reconstruction with the model's predictions in the masked cells, and which masked "
                         f"tokens it got right (masked-token accuracy {accuracy['masked_accuracy']:.0%}).")
    return figures


STREAMS_OF = {"image": ("image",), "video": ("video",), "joint": ("image", "video")}


def collect_results(scale: DemoScale, seeds: tuple[int, ...], quick: bool, bench: dict, tokenizer: dict,
                    pretrained: dict, probes: dict, finetuned: dict) -> dict:
    """The numbers the report and results.json show, gathered from the phases' outputs."""
    first = pretrained[seeds[0]]
    joint_cfg = first["BEVT"]["config"]
    encoder = create_model(joint_cfg["model"]["name"])
    counts = bench["counts"]
    tasks = {task: {"classes": bench["paths"][f"{task}_num_classes"], "chance": 100 / bench["paths"][f"{task}_num_classes"],
                    "labelled": counts[f"{task}_labelled"], "pool": counts[f"{task}_train"], "val": counts[f"{task}_val"]}
             for task in TASKS}
    some_finetune = next(iter(finetuned.values()), None)
    return {
        "seeds": list(seeds),
        "finetune_seeds": list(finetuned),
        "quick": quick,
        "data_seed": bench["data_seed"],
        "model": {"flavor": joint_cfg["model"]["name"], "params": sum(p.numel() for p in encoder.parameters())},
        "batch": {"images": joint_cfg["data"]["image_batch_size"], "clips": joint_cfg["data"]["video_batch_size"],
                  "finetune_clips": read_recipe(FINETUNE_RECIPE)["data"]["video_batch_size"]},
        "data": {"size": scale.size, "frames": scale.frames, "images": counts["images_train"],
                 "image_classes": bench["paths"]["images_num_classes"],
                 "pretrain_videos": counts["spatial_train"] + counts["temporal_train"], "tasks": tasks},
        "tokenizer": tokenizer,
        "steps": {"tokenizer": scale.tokenizer_steps,
                  "pretrain": {name: run["steps"] for name, run in first.items()},
                  "finetune": {task: some_finetune["No pretraining"][task]["steps"] for task in TASKS}
                  if some_finetune else {}},
        "finetune_lr": {method: some_finetune[method]["temporal"]["lr"] for method in METHODS} if some_finetune else {},
        "pretrain": {str(seed): {name: {f"{stream}_loss": demo_report.last_loss(run["run"], stream)
                                        for stream in STREAMS_OF[run["streams"]]} for name, run in runs.items()}
                     for seed, runs in pretrained.items()},
        "runs": {name: run["run"] for name, run in first.items()},
        # per seed, method, task: correctness of every validation clip per test mode
        "probe": {str(seed): {m: {t: probes[seed][m][t]["correct"] for t in TASKS} for m in METHODS}
                  for seed in seeds},
        "probe_train_top1": {str(seed): {m: {t: probes[seed][m][t]["train_top1"] for t in TASKS} for m in METHODS}
                             for seed in seeds},
        "finetune": {str(seed): {m: {t: finetuned[seed][m][t]["correct"] for t in TASKS} for m in METHODS}
                     for seed in finetuned},
        "finetune_train_acc": {str(seed): {m: {t: finetuned[seed][m][t]["train_acc"] for t in TASKS} for m in METHODS}
                               for seed in finetuned},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
    }
