"""`bevt pretrain` / `bevt finetune` / `bevt tokenizer train`: config -> task -> model, optimizer,
schedule -> the loop.

`train(cfg, resume=None)` is the whole run as a function (the CLI and the demo call it); it
returns the final checkpoint's directory. `train_tokenizer` runs a `tokenizer` recipe and then
writes the trained VQ tokenizer into run.out, where `tokenizer.path` of a pretraining recipe reads
it. `dry_run(cfg)` builds model, optimizer and schedule without data or weights and then reports
every missing input path at once.

A run owns its run.out (a lock, see checkpoint.RunLock) and is preemption-safe: SIGTERM or SIGINT
ends it after the current step with a checkpoint, and `Interrupted` says how to resume.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from contextlib import nullcontext
from pathlib import Path

import torch

from bevt.config import Config, config_to_dict, load_config, save_config
from bevt.errors import CheckpointError, ConfigError, DataError, Interrupted
from bevt.host_memory import keep_freed_host_memory
from bevt import checkpoint as ckpt
from bevt.distributed import (
    DistEnv, barrier, gather_objects, init_distributed, load_optimizer_state, max_over_ranks_on_host, model_state,
    optimizer_state, pick_device, seed_everything, shutdown, unwrap, wrap_model,
)
from bevt.train.logging import RunLogger
from bevt.train.loop import train as run_loop
from bevt.train.optim import FUSED_ADAMW_DEVICES, Schedule, build_ema, build_optimizer
from bevt.models.build import build_model
from bevt.models.convert import load_checkpoint_file
from bevt.tokenizers import load_tokenizer
from bevt.tokenizers.base import refuse_to_overwrite, tokenizer_fingerprint
from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer
from bevt.train.tasks import check_finetune_labels, make_task

log = logging.getLogger(__name__)


def run_training(args) -> int:
    """CLI entry: args.verb in {pretrain, finetune}, args.config, args.overrides, args.dry_run, args.resume."""
    cfg = load_config(args.config, args.overrides)
    if cfg.task != args.verb:
        raise ConfigError(f"task={cfg.task!r}: {args.config} is a {cfg.task} recipe; run `bevt {cfg.task} --config {args.config}`")
    if args.dry_run:
        dry_run(cfg)
        return 0
    try:
        train(cfg, resume=args.resume)
    except Interrupted as stop:
        command = shlex.join(["bevt", args.verb, "--config", args.config, *args.overrides, "--resume", "auto"])
        raise Interrupted(f"{stop}; resume with: {command}", stop.signum) from None
    return 0


def run_tokenizer_training(args) -> int:
    """CLI entry of `bevt tokenizer train --images DIR --out DIR [--config RECIPE] [key=value ...]`."""
    overrides = [f"data.images={args.images}", f"run.out={args.out}", *args.overrides]
    cfg = load_config(args.config, overrides)
    if cfg.task != "tokenizer":
        raise ConfigError(f"task={cfg.task!r}: {args.config} is a {cfg.task} recipe, not a tokenizer one")
    if args.dry_run:
        dry_run(cfg)
        return 0
    if args.resume is None:
        refuse_to_overwrite(args.out, force=args.force)
    path = train_tokenizer(cfg, resume=args.resume)
    if path is not None:
        print(f"tokenizer written to {path}; use it with tokenizer.path={path}")
    return 0


def train_tokenizer(cfg: Config, resume: str | None = None) -> Path | None:
    """Train the VQ tokenizer of `cfg` and save it (tokenizer.json + weights) into run.out; returns
    that directory on rank 0 (None on other ranks)."""
    final = train(cfg, resume=resume)
    if int(os.environ.get("RANK", 0)) != 0:
        return None
    tokenizer = build_model(cfg)
    ckpt.load_strict(tokenizer, ckpt.read_weights(final), str(final))
    tokenizer.eval().save(cfg.run.out)
    return Path(cfg.run.out)


def input_paths(cfg: Config) -> dict[str, str]:
    """Config key -> path of every file or folder the run reads."""
    keys = cfg.required_paths() + ["data.root", "data.labels", "data.val", "run.init_from"]
    paths = {}
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None:
            paths[key] = value
    return paths


def missing_inputs(cfg: Config, resuming: bool = False) -> list[str]:
    """'key=path' for every input that does not exist (init_from is not read when resuming)."""
    return [f"{key}={path}" for key, path in input_paths(cfg).items()
            if not Path(path).exists() and not (resuming and key == "run.init_from")]


def _check_run_options(cfg: Config, device: torch.device) -> None:
    if cfg.run.precision == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision='fp16': fp16 with a grad scaler needs a GPU; use bf16 or fp32 on CPU")
    if cfg.optim.ema and cfg.run.parallel == "fsdp":
        raise ConfigError("optim.ema=true: EMA is supported with run.parallel=ddp only")


def encoder_depths(model: torch.nn.Module) -> tuple[int, ...]:
    """Blocks per Swin stage, for layer-wise lr decay; () for a model without a Swin encoder."""
    encoder = getattr(model, "encoder", None)
    return tuple(len(stage.blocks) for stage in encoder.layers) if hasattr(encoder, "layers") else ()


def dry_run(cfg: Config) -> None:
    """Build model, optimizer and schedule on the meta device (no memory, no init), then fail
    with one DataError naming every missing input, or print what a run would do."""
    device = pick_device(cfg.run.device)
    _check_run_options(cfg, device)
    cfg = cfg if missing_inputs(cfg) else check_finetune_labels(cfg)
    tokenizer = None
    if cfg.task == "pretrain":
        tokenizer = _tokenizer_or_stand_in(cfg.tokenizer.path)
    with torch.device("meta"):
        model = build_model(cfg, tokenizer=tokenizer)
        optimizer = build_optimizer(model, cfg.optim, encoder_depths(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {cfg.model.name}, {trainable / 1e6:.2f} M trainable parameters ({cfg.task})")
    print(f"optimizer: AdamW, {len(optimizer.param_groups)} parameter groups, peak lr {cfg.optim.lr:g}")
    missing = missing_inputs(cfg)
    if missing:
        raise DataError(
            f"dry run: config, model and optimizer are valid (the schedule follows from the data), "
            f"but inputs are missing: {', '.join(missing)}"
        )
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    task = make_task(cfg, rank=0, world_size=world_size, device=device)
    schedule = Schedule.from_epochs(task.batches_per_epoch, cfg.optim.accum_steps, cfg.optim.epochs, cfg.optim.warmup_epochs)
    print(f"schedule: {schedule.total_steps} optimizer steps ({schedule.steps_per_epoch} per epoch x "
          f"{cfg.optim.epochs:g} epochs on {world_size} process(es)), {schedule.warmup_steps} warm-up")
    print(f"dry run ok: all inputs found; a run would write to {cfg.run.out}")


def _tokenizer_or_stand_in(path: str):
    """The configured tokenizer, or (while it does not exist) an untrained DALL-E dVAE on the meta
    device with the paper's 8192 codes, so the pretrainer's token head has its real size."""
    if Path(path).exists():
        return load_tokenizer(path)
    with torch.device("meta"):
        return DalleTokenizer(DalleEncoder())


def read_init_weights(path: str) -> tuple[dict[str, torch.Tensor], Config | None]:
    """Weights to start from: a bevt checkpoint / run directory (with its config), or a weights
    file from `bevt convert` (.safetensors / .pth)."""
    if Path(path).is_file():
        return load_checkpoint_file(path), None
    found = ckpt.resolve_checkpoint(path)
    return ckpt.read_weights(found), ckpt.read_config(found)


def train(cfg: Config, resume: str | None = None) -> Path:
    """Run (or resume) the training of `cfg`; returns the final checkpoint directory.

    Under torchrun every rank calls this; only rank 0 writes files and holds the run.out lock.
    SIGTERM / SIGINT end the run after the current step with a checkpoint and raise `Interrupted`.
    """
    earlier = ckpt.complete_checkpoints(cfg.run.out)
    if resume is None and earlier:  # its metrics and checkpoint pruning would mix with this run's
        raise ConfigError(f"run.out={cfg.run.out} already holds checkpoints of an earlier run (newest: "
                          f"{earlier[-1].name}): pass --resume auto to continue it, or choose another run.out")
    missing = missing_inputs(cfg, resuming=resume is not None and (resume != "auto" or bool(earlier)))
    if missing:
        raise DataError(f"missing input(s): {', '.join(missing)}")
    first_process = int(os.environ.get("RANK", 0)) == 0  # before the process group exists
    with ckpt.RunLock(cfg.run.out) if first_process else nullcontext():  # refuses while another run is live
        cfg = check_finetune_labels(cfg)
        env = init_distributed(cfg.run.device)
        if env.device.type == "cpu":
            keep_freed_host_memory()
        try:
            return _train(cfg, env, resume)
        finally:
            shutdown()


class StopOnSignal:
    """SIGTERM (what schedulers send before preemption) and SIGINT (Ctrl-C) ask the run to stop
    after the current step rather than kill it. Ranks may receive the signal during different
    steps, so after every step they agree on it (`requested`, a max over ranks) and all stop at the
    same one. The first signal restores the previous handlers: a second one acts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = 0
        self.signum = 0  # the agreed signal, once `requested()` said yes
        self.previous = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        self.received = signum
        self._restore()
        log.warning("%s: stopping after this step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def requested(self) -> bool:
        """Whether any rank received a signal (collective: the same answer on every rank)."""
        self.signum = max_over_ranks_on_host(self.received)
        return self.signum != 0


def _train(cfg: Config, env: DistEnv, resume: str | None) -> Path:
    _check_run_options(cfg, env.device)
    seed_everything(cfg.run.seed, rank=0)  # the same initial weights on every rank (FSDP shards them as they are)
    run_dir = Path(cfg.run.out)
    start = ckpt.resume_checkpoint(resume, run_dir)
    if resume is not None and start is None:
        log.info("no complete checkpoint in %s yet: starting from step 0", run_dir)
    if start is not None:
        _check_resumed_config(ckpt.read_config(start), cfg, start)
    if env.is_main:
        save_config(cfg, run_dir / ckpt.CONFIG_FILE)

    task = make_task(cfg, env.rank, env.world_size, env.device)
    schedule = Schedule.from_epochs(task.batches_per_epoch, cfg.optim.accum_steps, cfg.optim.epochs, cfg.optim.warmup_epochs)
    model = build_model(cfg).to(env.device)
    # the identity of the pretraining targets: a tokenizer retrained in place must not go unnoticed on resume
    fingerprint = tokenizer_fingerprint(cfg.tokenizer.path) if cfg.task == "pretrain" else None
    if start is not None:
        ckpt.load_strict(model, ckpt.read_weights(start), str(start))
    elif cfg.run.init_from is not None:
        state, source_cfg = read_init_weights(cfg.run.init_from)
        task.init_weights(model, state, source_cfg)
    ema = build_ema(model, cfg.optim)
    if cfg.run.compile:  # after the EMA copy, which stays eager
        model.encoder.compile_blocks()
    model = wrap_model(model, env, cfg.run.parallel)
    # after wrapping: FSDP replaces the parameters by sharded ones, which the optimizer must hold
    optimizer = build_optimizer(unwrap(model), cfg.optim, encoder_depths(unwrap(model)), fused=env.device.type in FUSED_ADAMW_DEVICES)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.run.precision == "fp16")
    seed_everything(cfg.run.seed, env.rank)  # from here on ranks draw different dropout / drop-path noise
    state = {"step": 0}
    if start is not None:
        _restore(start, env, model, optimizer, scaler, ema, task, state, fingerprint)
        log.info("resumed from %s at step %d", start, state["step"])

    def save():
        train_state = {
            "step": state["step"],
            "optimizer": optimizer_state(model, optimizer),
            "scaler": scaler.state_dict(),
            "ranks": gather_objects({
                "rng": ckpt.rng_state(),
                "streams": {name: stream.state_dict() for name, stream in task.streams.items()},
            }),
        }
        if fingerprint is not None:
            train_state["tokenizer_fingerprint"] = fingerprint
        weights = model_state(model)
        if env.is_main:
            ckpt.save_checkpoint(run_dir, state["step"], cfg, weights, train_state,
                                 ema_state=None if ema is None else ema.module.state_dict(),
                                 class_names=task.class_names, keep=cfg.run.keep_checkpoints)
        barrier()

    logger = RunLogger(run_dir, env.is_main, schedule.total_steps, state["step"], desc=_describe(cfg))
    log.info("%s: %d steps (%d per epoch), %d warm-up, %d process(es) on %s", _describe(cfg), schedule.total_steps,
             schedule.steps_per_epoch, schedule.warmup_steps, env.world_size, env.device)
    try:
        with StopOnSignal() as stop:
            finished = run_loop(cfg, task, model, optimizer, scaler, ema, schedule, state, env, logger, save,
                                stop_requested=stop.requested)
    finally:
        logger.close()
    if not finished:
        raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} after step {state['step']} of "
                          f"{schedule.total_steps}; checkpoint written to {ckpt.checkpoint_dir(run_dir, state['step'])}",
                          stop.signum)
    for stream in task.streams.values():
        stream.finish()  # the skipped-sample summary of the last (partial) epoch
    return ckpt.checkpoint_dir(run_dir, schedule.total_steps)


# Settings that fix the shape of the model or of its training state: a resume must keep them.
FIXED_ON_RESUME = ("task", "model.name", "model.window_size", "finetune.num_classes", "pretrain.streams")


def _check_resumed_config(saved: Config, cfg: Config, start: Path) -> None:
    """Refuse to resume with another model shape; warn about every other setting that changed."""
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(cfg))
    changed = {key: (old.get(key), value) for key, value in new.items()
               if old.get(key) != value and key not in ("run.out", "run.init_from")}
    for key in FIXED_ON_RESUME:
        if key in changed:
            before, now = changed[key]
            raise CheckpointError(f"{key}={now!r}: {start} was trained with {key}={before!r}; a resumed run keeps "
                                  "it (start a new run, e.g. with run.init_from, to change it)")
    if changed:
        log.warning("resuming %s with changed settings: %s", start,
                    ", ".join(f"{key} {before!r} -> {now!r}" for key, (before, now) in changed.items()))


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _restore(start: Path, env: DistEnv, model, optimizer, scaler, ema, task, state: dict,
             fingerprint: str | None) -> None:
    """Optimizer, scaler, EMA, step, and this rank's RNG and loader positions from a checkpoint."""
    saved = ckpt.read_train_state(start)
    saved_fingerprint = saved.get("tokenizer_fingerprint")
    if fingerprint is not None and saved_fingerprint is not None and saved_fingerprint != fingerprint:
        raise CheckpointError(
            f"tokenizer.path: the tokenizer changed since {start} was written (fingerprint {saved_fingerprint}, now "
            f"{fingerprint}), so its targets differ from the ones this run learned; restore that tokenizer "
            "or start a new run")
    load_optimizer_state(model, optimizer, saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    if ema is not None:
        ckpt.load_strict(ema.module, ckpt.read_weights(start, ema=True), f"{start} (EMA)")
    ranks = saved["ranks"]
    if len(ranks) != env.world_size:
        log.warning("checkpoint written by %d process(es), resuming on %d: random streams restart, "
                    "data order continues", len(ranks), env.world_size)
    mine = ranks[env.rank] if len(ranks) == env.world_size else ranks[0]
    for name, stream in task.streams.items():
        if name not in mine["streams"]:
            raise CheckpointError(f"{start}: no loader position for the {name} stream (was it trained with other streams?)")
        stream.load_state_dict(mine["streams"][name])
    if len(ranks) == env.world_size:
        ckpt.set_rng_state(mine["rng"])
    state["step"] = saved["step"]


def _describe(cfg: Config) -> str:
    return f"pretrain[{cfg.pretrain.streams}]" if cfg.task == "pretrain" else cfg.task
