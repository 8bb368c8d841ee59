"""`bevt pretrain` / `bevt finetune`: config -> task -> model, optimizer, schedule -> the loop.

`train(cfg, resume=None)` is the whole run as a function (the CLI and the demo call it); it
returns the final checkpoint's directory. `dry_run(cfg)` builds model, optimizer and schedule
without data or weights and then reports every missing input path at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

from bevt.config import Config, load_config, save_config
from bevt.errors import CheckpointError, ConfigError, DataError
from bevt import checkpoint as ckpt
from bevt.distributed import (
    DistEnv, barrier, gather_objects, init_distributed, load_optimizer_state, model_state, optimizer_state,
    pick_device, seed_everything, shutdown, unwrap, wrap_model,
)
from bevt.train.logging import RunLogger
from bevt.train.loop import Schedule, train as run_loop
from bevt.train.optim import FUSED_ADAMW_DEVICES, build_optimizer
from bevt.models.build import build_model
from bevt.train.tasks import make_task

log = logging.getLogger(__name__)


def run_training(args) -> int:
    """CLI entry: args.verb in {pretrain, finetune}, args.config, args.overrides, args.dry_run, args.resume."""
    cfg = load_config(args.config, args.overrides)
    if cfg.task != args.verb:
        raise ConfigError(f"task={cfg.task!r}: {args.config} is a {cfg.task} recipe; run `bevt {cfg.task} --config {args.config}`")
    if args.dry_run:
        dry_run(cfg)
    else:
        train(cfg, resume=args.resume)
    return 0


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
    return tuple(len(stage.blocks) for stage in model.encoder.layers)


def dry_run(cfg: Config) -> None:
    """Build model, optimizer and schedule on the meta device (no memory, no init), then fail
    with one DataError naming every missing input, or print what a run would do."""
    device = pick_device(cfg.run.device)
    _check_run_options(cfg, device)
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
        from bevt.tokenizers import load_tokenizer

        return load_tokenizer(path)
    from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer

    with torch.device("meta"):
        return DalleTokenizer(DalleEncoder())


def read_init_weights(path: str) -> tuple[dict[str, torch.Tensor], Config | None]:
    """Weights to start from: a bevt checkpoint / run directory (with its config), or a weights
    file from `bevt convert` (.safetensors / .pth)."""
    if Path(path).is_file():
        from bevt.models.convert import load_checkpoint_file

        return load_checkpoint_file(path), None
    found = ckpt.resolve_checkpoint(path)
    return ckpt.read_weights(found), ckpt.read_config(found)


def train(cfg: Config, resume: str | None = None) -> Path:
    """Run (or resume) the training of `cfg`; returns the final checkpoint directory.

    Under torchrun every rank calls this; only rank 0 writes files.
    """
    earlier = ckpt.complete_checkpoints(cfg.run.out)
    if resume is None and earlier:  # its metrics and checkpoint pruning would mix with this run's
        raise ConfigError(f"run.out={cfg.run.out} already holds checkpoints of an earlier run (newest: "
                          f"{earlier[-1].name}): pass --resume auto to continue it, or choose another run.out")
    resuming = resume is not None and ckpt.resume_checkpoint(resume, cfg.run.out) is not None
    missing = missing_inputs(cfg, resuming)
    if missing:
        raise DataError(f"missing input(s): {', '.join(missing)}")
    env = init_distributed(cfg.run.device)
    try:
        return _train(cfg, env, resume)
    finally:
        shutdown()


def _train(cfg: Config, env: DistEnv, resume: str | None) -> Path:
    _check_run_options(cfg, env.device)
    seed_everything(cfg.run.seed, rank=0)  # the same initial weights on every rank (FSDP shards them as they are)
    run_dir = Path(cfg.run.out)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / ckpt.CONFIG_FILE)

    task = make_task(cfg, env.rank, env.world_size, env.device)
    schedule = Schedule.from_epochs(task.batches_per_epoch, cfg.optim.accum_steps, cfg.optim.epochs, cfg.optim.warmup_epochs)
    model = build_model(cfg).to(env.device)
    start = ckpt.resume_checkpoint(resume, run_dir)
    if resume is not None and start is None:
        log.info("no complete checkpoint in %s yet: starting from step 0", run_dir)
    if start is not None:
        ckpt.load_strict(model, ckpt.read_weights(start), str(start))
    elif cfg.run.init_from is not None:
        state, source_cfg = read_init_weights(cfg.run.init_from)
        task.init_weights(model, state, source_cfg)
    ema = ModelEmaV3(model, decay=cfg.optim.ema_decay) if cfg.optim.ema else None
    if cfg.run.compile:  # after the EMA copy, which stays eager
        model.encoder.compile_blocks()
    model = wrap_model(model, env, cfg.run.parallel)
    # after wrapping: FSDP replaces the parameters by sharded ones, which the optimizer must hold
    optimizer = build_optimizer(unwrap(model), cfg.optim, encoder_depths(unwrap(model)), fused=env.device.type in FUSED_ADAMW_DEVICES)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.run.precision == "fp16")
    seed_everything(cfg.run.seed, env.rank)  # from here on ranks draw different dropout / drop-path noise
    state = {"step": 0}
    if start is not None:
        _restore(start, env, model, optimizer, scaler, ema, task, state)
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
        run_loop(cfg, task, model, optimizer, scaler, ema, schedule, state, env, logger, save)
    finally:
        logger.close()
    return ckpt.checkpoint_dir(run_dir, schedule.total_steps)


def _restore(start: Path, env: DistEnv, model, optimizer, scaler, ema, task, state: dict) -> None:
    """Optimizer, scaler, EMA, step, and this rank's RNG and loader positions from a checkpoint."""
    saved = ckpt.read_train_state(start)
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
    return f"pretrain[{cfg.pretrain.streams}]" if cfg.task == "pretrain" else "finetune"
