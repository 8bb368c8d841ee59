"""`bevt demo`: the paper's Tables 1 and 2 in miniature, on the built-in synthetic benchmark.

One process runs every phase by calling the library, as a user would chain the verbs:
1. the benchmark (`bevt synth`) and a VQ tokenizer trained on its images (the pretraining targets);
2. pretraining: BEVT-I (image stream), BEVT (joint, initialised from BEVT-I), BEVT-V (video stream
   from scratch), all with the `demo_pretrain` recipe;
3. finetuning of those three and of a randomly initialised baseline on the spatial and the temporal
   task (`demo_finetune`), each evaluated normal, single-frame and shuffled;
4. measurements of the pretraining targets (for the discussion), figures, DIR/report.md and
   DIR/results.json (demo_report.py writes the report).

Every phase records its outputs in DIR/results.json; a rerun with the same settings reuses the
phases already finished there, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import bevt
from bevt.demo import report as demo_report
from bevt.config import load_config, read_recipe
from bevt.demo.report import METHODS, TASKS
from bevt.errors import DataError
from bevt.train import main as training
from bevt.train.logging import read_metrics

# Pretraining runs: name -> (streams, the run it is initialised from).
PRETRAIN_RUNS = {"BEVT-I": ("image", None), "BEVT": ("joint", "BEVT-I"), "BEVT-V": ("video", None)}
# Finetuning: method -> the pretraining run its encoder starts from (None: random init).
FINETUNE_INIT = {"No pretraining": None, "BEVT-I": "BEVT-I", "BEVT-V": "BEVT-V", "BEVT": "BEVT"}
PRETRAIN_RECIPE, FINETUNE_RECIPE = "demo_pretrain", "demo_finetune"
WARMUP_SHARE = 0.1  # of every pretraining and finetuning run
# Finetuning lr of the no-pretraining baseline; the recipe's lower lr is for pretrained models,
# whose features a from-scratch lr destroys (numbers in configs/demo_finetune.yaml)
SCRATCH_LR = 1e-3
TARGET_STATS_CLIPS = 48  # temporal validation clips tokenized to measure the video targets
MOVING_PIXEL_THRESHOLD = 0.1  # a pixel this far from its clip's median (any channel, [0, 1]) shows the object


@dataclass(frozen=True)
class DemoScale:
    """What sets a demo's size, and so its time on a 2-core CPU. Run lengths are optimizer steps
    (the recipes' batches: 32 images and/or 8 clips per step)."""

    size: int  # frame side of the benchmark and the model input; the tokenizer sees half
    frames: int  # frames per video, and per clip
    images_per_class: int  # 8 appearance classes
    videos_per_class: int  # training videos per class and task (8 spatial, 6 temporal classes)
    val_videos_per_class: int
    tokenizer_steps: int
    codebook_size: int
    pretrain_steps: dict[str, int]
    finetune_steps: dict[str, int]  # per task: learning motion from scratch takes longer


QUICK = DemoScale(
    size=64, frames=8, images_per_class=16, videos_per_class=8, val_videos_per_class=8,
    tokenizer_steps=150, codebook_size=32,
    pretrain_steps={"BEVT-I": 40, "BEVT": 30, "BEVT-V": 30}, finetune_steps={"spatial": 30, "temporal": 30},
)
FULL = DemoScale(
    size=64, frames=8, images_per_class=150, videos_per_class=64, val_videos_per_class=32,
    tokenizer_steps=600, codebook_size=32,
    pretrain_steps={"BEVT-I": 400, "BEVT": 300, "BEVT-V": 300},
    finetune_steps={"spatial": 300, "temporal": 720},
)


def run_demo(args) -> int:
    """CLI entry: `bevt demo [--quick] [--out DIR] [--seed N]`."""
    scale = QUICK if args.quick else FULL
    results = run_all(Path(args.out), scale, args.seed, quick=args.quick)
    print("\nTable 1: pretraining methods (top-1 %)\n")
    print(demo_report.table1_markdown(results))
    print("\nTable 2: temporal dependency (top-1 %)\n")
    print(demo_report.table2_markdown(results))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


def run_all(out: Path, scale: DemoScale, seed: int, quick: bool) -> dict:
    """Every phase of the demo in `out`; returns the results dict the report is written from."""
    # Compute on all cores but one, which the recipes' data worker gets. On a 2-core machine
    # this also keeps the tiny model's many small ops from stalling on a second compute thread
    # whenever another process takes a core (measured: 10x slower steps with 2 threads then).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    out.mkdir(parents=True, exist_ok=True)
    # A finished phase is reused only by the same demo: same scale, seed and bevt version.
    settings = {"scale": dataclasses.asdict(scale), "seed": seed, "bevt": bevt.__version__}
    phases = PhaseRunner(out, settings, total=2 + len(PRETRAIN_RUNS) + len(METHODS) * len(TASKS) + 2)

    bench = phases.run("benchmark", "benchmark", lambda d: make_benchmark(d, scale, seed))
    tokenizer = phases.run("tokenizer", "tokenizer", lambda d: train_tokenizer(d, bench, scale, seed))
    pretrained = {}
    for name, (streams, init) in PRETRAIN_RUNS.items():
        init_from = pretrained[init]["checkpoint"] if init else None
        pretrained[name] = phases.run(
            f"pretrain {name} ({streams} stream{'s' if streams == 'joint' else ''})", f"pretrain/{name}",
            lambda d, streams=streams, init_from=init_from, name=name: pretrain(
                d, streams, init_from, bench, tokenizer, scale.pretrain_steps[name], seed),
        )
    finetuned = {}
    for method, init in FINETUNE_INIT.items():
        for task in TASKS:
            init_from = pretrained[init]["checkpoint"] if init else None
            overrides = () if init_from else (_set("optim.lr", SCRATCH_LR),)
            finetuned[(method, task)] = phases.run(
                f"finetune + evaluate {method} on the {task} task", f"finetune/{method}/{task}",
                lambda d, task=task, init_from=init_from, overrides=overrides: finetune(
                    d, task, init_from, bench, scale.finetune_steps[task], seed, overrides),
            )
    targets = phases.run("measure the video targets", "targets",
                         lambda d: measure_targets(bench, tokenizer, pretrained["BEVT"], scale, seed))
    results = collect_results(scale, seed, quick, bench, tokenizer, pretrained, finetuned, targets)
    results["figures"] = phases.run("figures", None, lambda: write_figures(out, pretrained, bench, seed),
                                    reuse=False)
    results["phases"] = phases.timings
    demo_report.write_report(results, out)
    phases.save(results=results)
    return results


class PhaseRunner:
    """Runs the demo's phases in order with a one-line progress display, times them, and keeps
    their outputs in DIR/results.json so a rerun with the same settings skips finished ones."""

    def __init__(self, out: Path, settings: dict, total: int):
        self.out = out
        self.settings = settings
        self.total = total
        self.path = out / "results.json"
        previous = json.loads(self.path.read_text()) if self.path.is_file() else {}
        same = previous.get("settings") == settings
        self.previous_outputs = previous.get("outputs", {}) if same else {}
        self.previous_timings = {p["name"]: p for p in previous.get("phases", [])} if same else {}
        self.outputs: dict[str, dict] = {}
        self.timings: list[dict] = []

    def run(self, name: str, folder: str | None, work, reuse: bool = True) -> dict:
        """`work(DIR/folder) -> dict` unless an earlier run with these settings finished it."""
        number = f"[{len(self.timings) + 1:2d}/{self.total}]"
        if reuse and name in self.previous_outputs:
            output, wall = self.previous_outputs[name], self.previous_timings[name]["wall_s"]
            print(f"{number} {name}: done by an earlier run in {self.out}, reused", flush=True)
        else:
            print(f"{number} {name} ...", flush=True)
            started = time.perf_counter()
            if folder is None:
                output = work()
            else:
                directory = self.out / folder
                shutil.rmtree(directory, ignore_errors=True)  # a phase cut short leaves partial files
                directory.mkdir(parents=True)
                output = work(directory)
            wall = time.perf_counter() - started
            print(f"{number} {name}: {demo_report.minutes(wall)}", flush=True)
        self.outputs[name] = output
        self.timings.append({"name": name, "wall_s": round(wall, 1)})
        self.save()
        return output

    def save(self, **extra) -> None:
        state = {"settings": self.settings, "phases": self.timings, "outputs": self.outputs, **extra}
        self.path.write_text(json.dumps(state, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Phases. Each returns a JSON-serialisable dict (paths as strings).
# ----------------------------------------------------------------------------------------------


def make_benchmark(directory: Path, scale: DemoScale, seed: int) -> dict:
    """The synthetic benchmark, plus one unlabelled list of both tasks' training videos: the
    video pretraining set (like K400 for the paper, used without its labels)."""
    from bevt.data.synthetic import make_synthetic_benchmark

    paths = make_synthetic_benchmark(
        str(directory / "data"), seed=seed, size=scale.size, frames=scale.frames,
        images_per_class=scale.images_per_class, val_images_per_class=2, videos_per_class=scale.videos_per_class,
        val_videos_per_class=scale.val_videos_per_class, workers=os.cpu_count() or 1,
    )
    videos = directory / "pretrain_videos.txt"
    with videos.open("w") as merged:
        for task in TASKS:
            folder = Path(paths[f"{task}_train"]).parent.resolve()
            for line in Path(paths[f"{task}_train"]).read_text().splitlines():
                merged.write(f"{folder / line.rsplit(maxsplit=1)[0]} 0\n")
    manifest = json.loads(Path(paths["manifest"]).read_text())
    return {"paths": paths, "pretrain_videos": str(videos), "counts": manifest["counts"]}


def train_tokenizer(directory: Path, bench: dict, scale: DemoScale, seed: int) -> dict:
    """bevt's VQ tokenizer on the benchmark's training images, by the one training loop."""
    overrides = [
        _set("data.images", bench["paths"]["images_train"]), _set("run.out", str(directory)),
        _set("data.size", scale.size), _set("data.short_side", [scale.size, scale.size + scale.size // 4]),
        _set("vq.width", 32), _set("vq.codebook_size", scale.codebook_size), _set("data.workers", 0),
        _set("run.seed", seed), _set("run.device", "cpu"), _set("run.checkpoint_every", scale.tokenizer_steps),
        _set("run.log_every", max(1, scale.tokenizer_steps // 20)),
        *_length("tokenizer_vq", scale.tokenizer_steps, bench["counts"]["images_train"], "image_batch_size"),
        _set("optim.warmup_epochs", 0),
    ]
    training.train_tokenizer(load_config("tokenizer_vq", overrides))
    last = read_metrics(directory)[-1]
    return {"path": str(directory), "codebook_size": scale.codebook_size, "psnr_db": last["psnr"],
            "codes_used": last["codes_used"]}


def _set(key: str, value) -> str:
    """A `key=value` override; JSON is valid YAML, so paths with any characters survive."""
    return f"{key}={json.dumps(value)}"


def _length(recipe: str, steps: int, samples: int, batch_key: str) -> list[str]:
    """Overrides for a run of `steps` optimizer steps over `samples` (the loop counts epochs of
    full batches); warm-up is a fixed share of every run."""
    batch = read_recipe(recipe)["data"][batch_key]
    if samples < batch:
        raise DataError(f"{samples} samples make no batch of {batch} (data.{batch_key} of {recipe}); "
                        "use a larger demo scale")
    epochs = steps / (samples // batch)
    return [_set("optim.epochs", epochs), _set("optim.warmup_epochs", WARMUP_SHARE * epochs)]


def pretrain(directory: Path, streams: str, init_from: str | None, bench: dict, tokenizer: dict,
             steps: int, seed: int) -> dict:
    from bevt.config import config_to_dict, load_config
    from bevt.train.main import train

    counts = bench["counts"]
    if streams == "image":  # the main stream, whose epochs the run counts
        length = _length(PRETRAIN_RECIPE, steps, counts["images_train"], "image_batch_size")
    else:
        videos = counts["spatial_train"] + counts["temporal_train"]
        length = _length(PRETRAIN_RECIPE, steps, videos, "video_batch_size")
    overrides = [
        _set("pretrain.streams", streams), _set("tokenizer.path", tokenizer["path"]),
        _set("data.images", bench["paths"]["images_train"]), _set("data.train", bench["pretrain_videos"]),
        *length, _set("run.out", str(directory)), _set("run.seed", seed), _set("run.init_from", init_from),
    ]
    cfg = load_config(PRETRAIN_RECIPE, overrides)
    checkpoint = train(cfg)
    return {"checkpoint": str(checkpoint), "run": str(directory), "streams": streams,
            "steps": read_metrics(directory)[-1]["step"], "config": config_to_dict(cfg)}


def finetune(directory: Path, task: str, init_from: str | None, bench: dict, steps: int, seed: int,
             overrides: tuple[str, ...] = ()) -> dict:
    """Finetune on `task`, then evaluate normal, single-frame and shuffled on its validation set;
    `overrides` (key=value) come last, for probes of the demo's runs."""
    from bevt.config import config_to_dict, load_config
    from bevt.eval.classify import evaluate
    from bevt.train.main import train

    paths = bench["paths"]
    cfg = load_config(FINETUNE_RECIPE, [
        _set("data.train", paths[f"{task}_train"]), _set("data.val", paths[f"{task}_val"]),
        _set("data.flip", task == "spatial"), _set("finetune.num_classes", _num_classes(bench, task)),
        *_length(FINETUNE_RECIPE, steps, bench["counts"][f"{task}_train"], "video_batch_size"),
        _set("run.out", str(directory)), _set("run.seed", seed), _set("run.init_from", init_from), *overrides,
    ])
    checkpoint = train(cfg)
    evaluation = evaluate(cfg, checkpoint, temporal_test=True, out_dir=directory / "eval")
    rows = read_metrics(directory)
    last_quarter = rows[-max(1, len(rows) // 4):]
    return {
        "checkpoint": str(checkpoint),
        "steps": rows[-1]["step"],
        "train_acc": 100 * sum(row["acc"] for row in last_quarter) / len(last_quarter),
        "videos": evaluation["videos"],
        "top1": {mode: r["top1"] for mode, r in evaluation["results"].items()},
        "config": config_to_dict(cfg),
    }


def _num_classes(bench: dict, task: str) -> int:
    return len(Path(bench["paths"][f"{task}_classes"]).read_text().split())


def measure_targets(bench: dict, tokenizer_info: dict, joint_run: dict, scale: DemoScale, seed: int) -> dict:
    """How much of the motion the video targets carry, on temporal-task validation clips.

    The object is the only thing that moves, so its pixels are those that differ from the clip's
    per-pixel median over time. Measured: the tokenizer's reconstruction PSNR on object and on
    background pixels; how often a token changes between consecutive frames in cells without
    the object (noise no model can predict) and in cells with it; the share of the most frequent
    token; and the accuracy of copying each masked token from the nearest frame where its cell
    is visible, with tube masks drawn as in pretraining (a shortcut that needs no motion).
    """
    import torch.nn.functional as F

    from bevt.data.datasets import load_annotations
    from bevt.data.decode import read_clip
    from bevt.data.transforms import to_video, tokenizer_view
    from bevt.masking import build_mask_generator, mask_to_token_grid
    from bevt.tokenizers import load_tokenizer

    masking = joint_run["config"]["masking"]
    tokenizer = load_tokenizer(tokenizer_info["path"])
    grid = (scale.frames // 2, scale.size // 16, scale.size // 16)
    masks = build_mask_generator(masking["video"], grid, ratio=masking["ratio"], min_cells=masking["min_cells"],
                                 tube_length=masking["tube_length"], wrap=masking["wrap"])
    generator = torch.Generator().manual_seed(seed)
    samples = load_annotations(bench["paths"]["temporal_val"]).samples[:TARGET_STATS_CLIPS]
    counts = torch.zeros(tokenizer.vocab_size)
    totals = dict.fromkeys(("object_sq_err", "object_px", "background_sq_err", "background_px", "static_flips",
                            "static_pairs", "object_flips", "object_pairs", "copied", "masked"), 0.0)
    with torch.no_grad():
        for sample in samples:
            frames, _ = read_clip(sample.path, lambda n: range(min(n, scale.frames)))
            pixels = tokenizer_view(to_video(frames), scale.size // 2).transpose(0, 1)  # (T,3,h,w)
            tokens = tokenizer.encode(pixels)  # (T,h/8,w/8)
            counts += torch.bincount(tokens.flatten(), minlength=tokenizer.vocab_size)
            sq_err = (tokenizer.decode(tokens) - pixels).pow(2).mean(1)  # (T,h,w)
            moving = (pixels - pixels.median(0).values).abs().amax(1) > MOVING_PIXEL_THRESHOLD  # (T,h,w)
            totals["object_sq_err"] += sq_err[moving].sum().item()
            totals["object_px"] += moving.sum().item()
            totals["background_sq_err"] += sq_err[~moving].sum().item()
            totals["background_px"] += (~moving).sum().item()
            cell_moving = F.max_pool2d(moving[:, None].float(), tokenizer.downsample)[:, 0].bool()  # (T,h/8,w/8)
            pair_moving = cell_moving[1:] | cell_moving[:-1]
            flips = tokens[1:] != tokens[:-1]
            totals["static_flips"] += flips[~pair_moving].sum().item()
            totals["static_pairs"] += (~pair_moving).sum().item()
            totals["object_flips"] += flips[pair_moving].sum().item()
            totals["object_pairs"] += pair_moving.sum().item()
            mask = mask_to_token_grid(masks(generator))  # (T,h/8,w/8)
            guess = copy_from_nearest_visible(tokens, mask)
            totals["copied"] += (guess[mask] == tokens[mask]).sum().item()
            totals["masked"] += mask.sum().item()
    return {
        "clips": len(samples),
        "codebook_size": tokenizer.vocab_size,
        "codes_used": int((counts > 0).sum()),
        "top_token_share": (counts.max() / counts.sum()).item(),
        "object_pixel_share": totals["object_px"] / (totals["object_px"] + totals["background_px"]),
        "object_psnr_db": _psnr(totals["object_sq_err"] / max(totals["object_px"], 1)),
        "background_psnr_db": _psnr(totals["background_sq_err"] / max(totals["background_px"], 1)),
        "static_cell_change_rate": totals["static_flips"] / max(totals["static_pairs"], 1),
        "object_cell_change_rate": totals["object_flips"] / max(totals["object_pairs"], 1),
        "copy_accuracy": totals["copied"] / max(totals["masked"], 1),
    }


def _psnr(mean_squared_error: float) -> float:
    return -10 * math.log10(max(mean_squared_error, 1e-10))


def copy_from_nearest_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(T,h,w) tokens and mask -> each cell's token in the nearest frame where that cell is
    unmasked (-1 where it is masked in every frame): the guess of a model that copies, not one
    that understands motion."""
    frames = tokens.shape[0]
    guess = torch.full_like(tokens, -1)
    for t in range(frames):
        for s in sorted(range(frames), key=lambda s: abs(s - t), reverse=True):  # nearest written last
            guess[t] = torch.where(mask[s], guess[t], tokens[s])
    return guess


def write_figures(out: Path, pretrained: dict, bench: dict, seed: int) -> dict[str, str]:
    """Pretraining loss curves, and masks with token reconstructions of the BEVT model on a
    temporal-task validation clip and a held-out image; -> {PNG name: caption} of the latter."""
    from bevt.data.datasets import load_annotations
    from bevt.eval.visualize import visualize_file

    offsets = {name: pretrained[init]["steps"] for name, (_, init) in PRETRAIN_RUNS.items() if init}
    demo_report.plot_pretraining_curves({name: run["run"] for name, run in pretrained.items()},
                                        out / demo_report.LOSS_CURVES_PNG, offsets)
    clip = load_annotations(bench["paths"]["temporal_val"]).samples[0].path
    image = load_annotations(bench["paths"]["images_val"]).samples[0].path
    figures = {}
    for name, source, what in (("masked_video.png", clip, "a temporal-task validation clip"),
                               ("masked_image.png", image, "a held-out image")):
        accuracy = visualize_file(source, out / name, checkpoint=pretrained["BEVT"]["checkpoint"], seed=seed)
        figures[name] = (f"BEVT on {what}: the input, the mask (tube masking for clips, "
                         "blockwise for images), the tokenizer's reconstruction of the true tokens, the "
                         "reconstruction with the model's predictions in the masked cells, and which masked "
                         f"tokens it got right (masked-token accuracy {accuracy['masked_accuracy']:.0%}).")
    return figures


STREAMS_OF = {"image": ("image",), "video": ("video",), "joint": ("image", "video")}


def collect_results(scale: DemoScale, seed: int, quick: bool, bench: dict, tokenizer: dict, pretrained: dict,
                    finetuned: dict, targets: dict) -> dict:
    """The numbers the report and results.json show, gathered from the phases' outputs."""
    from bevt.models import create_model

    joint_cfg = pretrained["BEVT"]["config"]
    encoder = create_model(joint_cfg["model"]["name"])
    counts = bench["counts"]
    tasks = {}
    for task in TASKS:
        classes = _num_classes(bench, task)
        tasks[task] = {"classes": classes, "chance": 100 / classes, "train": counts[f"{task}_train"],
                       "val": counts[f"{task}_val"]}
    return {
        "seed": seed,
        "quick": quick,
        "model": {"flavor": joint_cfg["model"]["name"], "params": sum(p.numel() for p in encoder.parameters())},
        "batch": {"images": joint_cfg["data"]["image_batch_size"], "clips": joint_cfg["data"]["video_batch_size"],
                  "finetune_clips": finetuned[("BEVT", "temporal")]["config"]["data"]["video_batch_size"]},
        "data": {"size": scale.size, "frames": scale.frames, "images": counts["images_train"],
                 "image_classes": len(Path(bench["paths"]["images_classes"]).read_text().split()),
                 "pretrain_videos": counts["spatial_train"] + counts["temporal_train"], "tasks": tasks},
        "tokenizer": tokenizer,
        "steps": {"tokenizer": scale.tokenizer_steps,
                  "pretrain": {name: run["steps"] for name, run in pretrained.items()},
                  "finetune": {task: finetuned[("No pretraining", task)]["steps"] for task in TASKS}},
        "pretrain": {name: {f"{stream}_trend": demo_report.loss_trend(run["run"], stream)
                            for stream in STREAMS_OF[run["streams"]]}
                     for name, run in pretrained.items()},
        "finetune": {method: {task: finetuned[(method, task)]["top1"] for task in TASKS} for method in METHODS},
        "finetune_lr": {method: finetuned[(method, "temporal")]["config"]["optim"]["lr"] for method in METHODS},
        "finetune_train_acc": {method: {task: finetuned[(method, task)]["train_acc"] for task in TASKS}
                               for method in METHODS},
        "tokens": targets,
        "tubelet_asymmetry": {method: tubelet_asymmetry_of_runs(
            pretrained[init] if init else None, finetuned[(method, "temporal")], seed)
            for method, init in FINETUNE_INIT.items()},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
    }


def tubelet_asymmetry(weight: torch.Tensor) -> float:
    """|W0 - W1| / |W0 + W1| of a (C,3,2,4,4) video patch embedding over its two frames: 0 when
    both frames of a tubelet are weighted alike (as inflating a 2D embedding makes them), so a
    tubelet cannot tell forward from backward motion; about 1 for independent random weights."""
    first, second = weight[:, :, 0].float(), weight[:, :, 1].float()
    return ((first - second).norm() / (first + second).norm().clamp_min(1e-12)).item()


def tubelet_asymmetry_of_runs(pretrained: dict | None, finetuned: dict, seed: int) -> dict:
    """The video patch embedding's asymmetry where temporal finetuning started and where it ended."""
    from bevt.models.convert import inflate_patch_embed
    from bevt.models import create_model
    from bevt.checkpoint import read_weights

    key = "encoder.patch_embed.proj.weight"
    if pretrained is None:
        torch.manual_seed(seed)
        start = create_model(finetuned["config"]["model"]["name"]).patch_embed.proj.weight.detach()
    else:
        state = read_weights(pretrained["checkpoint"])
        image_only = pretrained["streams"] == "image"  # finetuning inflates a stage-1 checkpoint
        start = inflate_patch_embed(state["encoder.patch_embed_2d.proj.weight"]) if image_only else state[key]
    return {"start": tubelet_asymmetry(start), "end": tubelet_asymmetry(read_weights(finetuned["checkpoint"])[key])}
