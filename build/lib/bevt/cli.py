"""`bevt <verb>`: parse the command line, then call one function per verb.

Each verb imports its implementation lazily so `bevt --help` stays fast and a verb's heavy
dependencies (torch, PyAV, TensorBoard, ...) load only when that verb runs.

Every mistake a user can make ends in one line naming the culprit and a non-zero exit: argument
errors (2), `UsageError`s (2: bad config, data, checkpoint or output path), and OS errors on a
named file (1: missing, unreadable, no permission, disk full). `-v` adds the traceback; an error
that names no file is a bug and always shows it. A training run stopped by SIGTERM / SIGINT exits
with 128 + the signal number (143 / 130) after its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from bevt.errors import Interrupted, UsageError, check_writable


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other user error (the usage is in --help); `-v`
    accepted after any verb (its SUPPRESS default keeps the value given before the verb)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="debug logs, and a traceback with any error")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


POSITIVE_INT = _int_at_least(1)
NON_NEGATIVE_INT = _int_at_least(0)


# ----------------------------------------------------------------------------------------------
# Arguments per verb. Each `_add_<verb>` builds one sub-parser; each `_run_<verb>` runs it.
# ----------------------------------------------------------------------------------------------


def _add_info(sub):
    p = sub.add_parser("info", help="parameters and GMACs per view of a model flavor")
    p.add_argument("name", help="model flavor: debug, swin_t, swin_s, swin_b, swin_l")
    p.add_argument("--frames", type=POSITIVE_INT, default=32)
    p.add_argument("--size", type=POSITIVE_INT, default=224)
    p.add_argument("--window", default="8,7,7", help="temporal,height,width window (default 8,7,7)")
    p.add_argument("--num-classes", type=POSITIVE_INT, default=400)
    return _run_info


def _run_info(args):
    from bevt.models.summary import run_info

    return run_info(args)


def _add_convert(sub):
    p = sub.add_parser("convert", help="convert a torchvision, official BEVT / Video Swin or timm 2D Swin checkpoint "
                                       "to bevt safetensors")
    p.add_argument("--from", dest="source", choices=["torchvision", "official", "timm"], required=True,
                   help="timm: a 2D Swin, inflated to 3D as the released code does")
    p.add_argument("input", help="input checkpoint (.pth / .pt / .safetensors)")
    p.add_argument("output", help="output .safetensors file")
    p.add_argument("--window", default=None, help="target window t,h,w (bias tables are resized to it)")
    p.add_argument("--pretraining", action="store_true",
                   help="official: keep the decoders and token head (a whole pretrainer, for run.init_from of `bevt pretrain`)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="official: take the EMA weights (ema_* buffers) or not; default: EMA when present")
    return _run_convert


def _run_convert(args):
    check_writable(args.output, "output", folder=False)
    from bevt.models.convert import run_convert

    return run_convert(args)


def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="import the DALL-E dVAE or train a VQ tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_verb", required=True)
    imp = tsub.add_parser("import-dalle", help="convert the official DALL-E pickles to safetensors once")
    imp.add_argument("encoder", help="encoder.pkl from the dall_e release")
    imp.add_argument("decoder", nargs="?", default=None, help="decoder.pkl (optional, for pictures)")
    imp.add_argument("--out", required=True, help="output directory")
    imp.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: the official files are pickled modules and unpickling runs their code",
    )
    tr = tsub.add_parser("train", help="train bevt's own VQ tokenizer on images (the one training loop)")
    tr.add_argument("--images", required=True, help="image folder (class folders) or list file: data.images")
    tr.add_argument("--out", required=True, help="run directory: checkpoints, then tokenizer.json + weights: run.out")
    tr.add_argument("--config", default="tokenizer_vq", help="tokenizer recipe (default tokenizer_vq)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.size=64 vq.codebook_size=256")
    tr.add_argument("--dry-run", action="store_true", help="build model, optimizer and schedule, check data paths, stop")
    tr.add_argument("--resume", default=None, help="'auto' (latest complete checkpoint in --out) or a path")
    tr.add_argument("--force", action="store_true", help="replace the tokenizer already in --out")
    return _run_tokenizer


def _run_tokenizer(args):
    check_writable(args.out, "--out", folder=True)
    if args.tokenizer_verb == "import-dalle":
        from bevt.tokenizers.dalle import run_import_dalle

        return run_import_dalle(args)
    from bevt.train.main import run_tokenizer_training

    return run_tokenizer_training(args)


def _add_visualize(sub):
    p = sub.add_parser("visualize", help="PNG grid: input, mask, tokenizer and model reconstructions")
    p.add_argument("input", help="an image or a video file")
    p.add_argument("--checkpoint", default=None, help="pretraining checkpoint (model predictions)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (defaults to the checkpoint's)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--seed", type=int, default=0)
    return _run_visualize


def _run_visualize(args):
    check_writable(args.out, "--out", folder=False)
    from bevt.eval.visualize import run_visualize

    return run_visualize(args)


def _add_synth(sub):
    p = sub.add_parser("synth", help="write the built-in synthetic benchmark (images + two video tasks)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--images-per-class", type=int, default=40)
    p.add_argument("--val-images-per-class", type=int, default=10)
    p.add_argument("--videos-per-class", type=int, default=24, help="training videos per class and task")
    p.add_argument("--val-videos-per-class", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    return _run_synth


def _run_synth(args):
    check_writable(args.out, "--out", folder=True)
    from bevt.data.synthetic import run_synth

    return run_synth(args)


def _add_data(sub):
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_verb", required=True)
    chk = dsub.add_parser("check", help="decode every video whole and every clip the sampler can draw; "
                          "report unreadable samples and bad labels")
    chk.add_argument("items", nargs="*", metavar="PATH | key=value",
                     help="a list file, an annotation json/csv, or a folder (default: data.train of --config); "
                          "key=value overrides of --config")
    chk.add_argument("--config", default=None, help="recipe whose annotations, labels, class count and sampler to use")
    chk.add_argument("--root", default=None, help="prefix for relative video paths")
    chk.add_argument("--labels", default=None, help="class names: SSv2 labels json, or one name per line")
    chk.add_argument("--frames", type=int, default=None, help="frames per clip (default: the recipe's, else 16)")
    chk.add_argument("--interval", type=int, default=None, help="frame interval (default: the recipe's, else 8)")
    chk.add_argument("--sampling", choices=("interval", "segment"), default=None, help="default: the recipe's")
    chk.add_argument("--fast", action="store_true", help="only decode one centred clip per video")
    chk.add_argument("--workers", type=int, default=4)
    chk.add_argument("--write-clean", default=None, metavar="OUT", help="write the list without the bad samples")
    return _run_data


def _run_data(args):
    from bevt.data.check import run_check

    return run_check(args)


def _add_train_verb(sub, verb, help_text):
    p = sub.add_parser(verb, help=help_text)
    p.add_argument("--config", required=True, help="YAML recipe (a path, or the name of a shipped recipe)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 run.out=runs/x")
    p.add_argument("--dry-run", action="store_true", help="build model, optimizer and schedule, check data paths, stop")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete, readable checkpoint in run.out; a fresh run if none) or a path")


def _add_pretrain(sub):
    _add_train_verb(sub, "pretrain", "masked image / video modeling: streams image (stage 1), joint (stage 2), video")
    return _run_train


def _add_finetune(sub):
    _add_train_verb(sub, "finetune", "finetune the video encoder + classification head")
    return _run_train


def _run_train(args):
    from bevt.train.main import run_training

    return run_training(args)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="multi-view top-1/top-5 and the temporal dependency test")
    p.add_argument("--checkpoint", required=True, help="a finetuned checkpoint or run directory")
    p.add_argument("--config", default=None,
                   help="recipe whose keys replace the checkpoint's own config (default: evaluate with the "
                        "checkpoint's data and eval settings)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.val=test.txt eval.clips=10")
    p.add_argument("--out", default=None, help="directory for results.json and results.md")
    p.add_argument("--temporal-test", action="store_true", help="also single-frame and shuffled evaluation")
    p.add_argument("--linear-probe", action="store_true",
                   help="fit a linear classifier on the frozen encoder's features of data.train, score data.val "
                        "(any pretraining or finetuned checkpoint)")
    p.add_argument("--probe-l2", type=float, default=1e-3, help="L2 penalty of the linear probe (default 1e-3)")
    return _run_evaluate


def _run_evaluate(args):
    if args.linear_probe:
        from bevt.eval.linear_probe import run_linear_probe

        return run_linear_probe(args)
    from bevt.eval.classify import run_evaluate

    return run_evaluate(args)


def _add_embed(sub):
    p = sub.add_parser("embed", help="one pooled encoder feature per clip -> .safetensors (probing, retrieval)")
    p.add_argument("inputs", nargs="+", help="video files, or one list / annotation file or class folder")
    p.add_argument("--checkpoint", required=True, help="pretraining or finetuned checkpoint (or its run directory)")
    p.add_argument("--out", required=True, help="output FILE.safetensors: features (N,C), labels (N,), paths in metadata")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=None, help="videos per batch (default: the checkpoint's eval.batch_size)")
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: the checkpoint's data.workers)")
    return _run_embed


def _run_embed(args):
    from bevt.eval.embed import run_embed

    return run_embed(args)


def _add_predict(sub):
    p = sub.add_parser("predict", help="top-5 labels of video files with a finetuned checkpoint")
    p.add_argument("videos", nargs="+", help="video files, or folders of them")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--top-k", type=POSITIVE_INT, default=5)
    return _run_predict


def _run_predict(args):
    from bevt.eval.predict import run_predict

    return run_predict(args)


def _add_demo(sub):
    p = sub.add_parser("demo", help="the paper's Table 1 and 2 in miniature on the built-in benchmark")
    p.add_argument("--quick", action="store_true", help="a smoke version of every phase (2 seeds, minutes)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default 0,1,2; --quick 0,1)")
    p.add_argument("--finetune-seeds", type=int, default=None,
                   help="how many of the seeds (the first ones) are also finetuned (default 1)")
    return _run_demo


def _run_demo(args):
    check_writable(args.out, "--out", folder=True)
    from bevt.demo.run import run_demo

    return run_demo(args)


def _add_config(sub):
    p = sub.add_parser("config", help="the shipped recipes, and a recipe merged with its defaults and overrides")
    csub = p.add_subparsers(dest="config_verb", required=True)
    csub.add_parser("list", help="the shipped recipes and what each is for")
    show = csub.add_parser("show", help="the merged config of a recipe, every key with its doc")
    show.add_argument("recipe", help="the name of a shipped recipe, or a YAML path")
    show.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.train=my_videos.txt")
    return _run_config


def _run_config(args):
    from bevt.config import documented_yaml, load_config, recipe_names, RECIPES

    if args.config_verb == "list":
        for name in recipe_names():
            comment = (RECIPES / f"{name}.yaml").read_text().split("\n", 1)[0]
            print(f"{name:<28} {comment.removeprefix('#').strip() if comment.startswith('#') else ''}")
        return 0
    print(documented_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


VERBS = [
    _add_config,
    _add_info,
    _add_convert,
    _add_tokenizer,
    _add_visualize,
    _add_synth,
    _add_data,
    _add_pretrain,
    _add_finetune,
    _add_evaluate,
    _add_predict,
    _add_embed,
    _add_demo,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(prog="bevt", description=__doc__.splitlines()[0])
    parser.set_defaults(verbose=False)
    sub = parser.add_subparsers(dest="verb", required=True)
    runners = {}
    for add in VERBS:
        before = set(sub.choices)
        runner = add(sub)
        for name in set(sub.choices) - before:
            runners[name] = runner
    return parser, runners


def _command(args) -> str:
    """'bevt data check' for the error prefix."""
    words = [args.verb] + [getattr(args, f"{args.verb}_verb", None) or ""]
    return " ".join(["bevt", *filter(None, words)])


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`--resume auto optim.lr=1e-4`), which argparse alone refuses
    if extra and hasattr(args, "overrides") and not any(arg.startswith("-") or "=" not in arg for arg in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    command = _command(args)
    try:
        return int(runners[args.verb](args) or 0)
    except Interrupted as stop:
        print(f"{command}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except UsageError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.filename is None:  # not about a path the user gave: a bug, keep the traceback
            raise
        if args.verbose:
            traceback.print_exc()
        culprit = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        print(f"{command}: error: {culprit}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
