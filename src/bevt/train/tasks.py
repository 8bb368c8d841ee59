"""What differs between the stages: which batches to draw, which model call, which metrics.

- `PretrainTask`: masked image / video modeling with the streams of `pretrain.streams`
  (image = stage 1 / BEVT-I, joint = stage 2 / BEVT, video = BEVT-V). The joint stream draws one
  image batch and one video batch per micro-step; the image loader cycles through its epochs
  independently of the video loader, whose epochs define the run's length.
- `FinetuneTask`: video classification with label smoothing and optional mixup / cutmix.
- `VQTokenizerTask`: bevt's own VQ tokenizer learns to reconstruct the tokenizer view of images.

Both expose `next_batch()` (on the device), `add_targets(model, batch)` (the frozen tokenizer's
tokens, timed apart by the loop), `forward(model, batch) -> {"loss", ...}`, `count(batch)`, the
main stream's `batches_per_epoch`, `init_weights(model, state, source_cfg)` and `streams` (whose
loader positions go into checkpoints). The loop (loop.py) does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bevt.checkpoint import load_strict
from bevt.config import Config
from bevt.data import loader as loaders
from bevt.data.datasets import SkipCounter, check_labels, count_classes, load_annotations
from bevt.data.transforms import VideoMixup
from bevt.distributed import unwrap
from bevt.models.convert import inflate_image_checkpoint, resize_bias_tables
from bevt.errors import CheckpointError, DataError
from bevt.masking import CELL, build_mask_generator
from bevt.models.build import window_of
from bevt.models.pretrainer import HostMask
from bevt.tokenizers.vq import psnr

log = logging.getLogger(__name__)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


class BatchStream:
    """Endless batches from a `ResumableLoader`, epoch after epoch, tallying skipped samples.

    Its state (epoch, position) is what the loader reports: batches handed out, not prefetched.
    """

    def __init__(self, loader, skip_counter, skip_dir: Path, rank: int):
        self.loader = loader
        self.skip_counter = skip_counter
        self.skip_dir = skip_dir
        self.rank = rank
        self.batches_per_epoch = len(loader)
        self._batches = None

    def __next__(self) -> dict:
        if self._batches is None:
            self._batches = iter(self.loader)
        batch = next(self._batches, None)
        if batch is None:  # epoch done: account for its skips, next epoch
            self.finish()
            self.loader.set_epoch(self.loader.sampler.epoch + 1)
            self._batches = iter(self.loader)
            batch = next(self._batches)
        self.skip_counter.update(batch)
        return batch

    def finish(self) -> None:
        """Account for the skips of the current epoch (a summary file when there were some); called
        at every epoch's end and once more when the run ends, usually inside an epoch."""
        skip_dir = str(self.skip_dir) if self.skip_counter.skipped else None
        self.skip_counter.end_epoch(self.loader.sampler.epoch, skip_dir, self.rank)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


class PretrainTask:
    """Masked modeling: `streams` maps "image" / "video" to endless batch iterators."""

    def __init__(self, cfg: Config, streams: dict, device: torch.device):
        self.cfg = cfg
        self.streams = streams
        self.device = device
        self.main_stream = "image" if cfg.pretrain.streams == "image" else "video"
        self.class_names = None

    @property
    def batches_per_epoch(self) -> int:
        return self.streams[self.main_stream].batches_per_epoch

    def next_batch(self) -> dict:
        """Every stream's batch on the device, plus its mask as the loader made it ("host_mask")."""
        batches = {name: next(stream) for name, stream in self.streams.items()}
        return {name: {**to_device(b, self.device), "host_mask": HostMask(b["mask"])} for name, b in batches.items()}

    def add_targets(self, model: nn.Module, batch: dict) -> dict:
        """The tokens of every stream's tokenizer view, computed by the pretrainer's tokenizer (one
        call for all streams) for the frames that hold masked cells (chosen on the host mask: no
        wait for the device)."""
        tokens = unwrap(model).target_tokens_streams([(b[f"{name}_tok"], b["host_mask"].mask) for name, b in batch.items()])
        return {**batch, "targets": dict(zip(batch, tokens))}

    def forward(self, model: nn.Module, batch: dict) -> dict:
        inputs = {f"{name}_batch": b for name, b in batch.items() if name != "targets"}
        return model(**inputs, targets=batch.get("targets"))

    def count(self, batch: dict) -> dict[str, int]:
        counts = {}
        if "video" in batch:
            counts["clips"] = len(batch["video"]["video"])
        if "image" in batch:
            counts["images"] = len(batch["image"]["image"])
        return counts

    def init_weights(self, model: nn.Module, state: dict[str, torch.Tensor], source_cfg: Config | None) -> None:
        """Start from a pretraining checkpoint; a stage-1 (image-stream) one is inflated 2D -> 3D
        for the video stream (patch embedding, bias tables). Parts it lacks keep their init."""
        source = self.cfg.run.init_from
        if _is_stage1(source_cfg) and self.cfg.pretrain.streams != "image":
            state = inflate_image_checkpoint(state, window_of(model.encoder))
        missing = load_strict(model, state, source, allow_missing=("",))
        log.info("initialised from %s (%d tensors; new: %s)", source, len(state), ", ".join(_roots(missing)) or "none")


class FinetuneTask:
    """Video classification: cross-entropy with label smoothing, or soft targets under mixup."""

    def __init__(self, cfg: Config, stream, class_names: list[str] | None, device: torch.device):
        self.cfg = cfg
        self.stream = stream
        self.class_names = class_names
        self.device = device
        self.batches_per_epoch = stream.batches_per_epoch
        self.streams = {"video": stream}
        ft = cfg.finetune
        self.mixup = None
        if ft.mixup > 0 or ft.cutmix > 0:
            self.mixup = VideoMixup(ft.num_classes, ft.mixup, ft.cutmix, ft.label_smoothing)

    def next_batch(self) -> dict:
        return to_device(next(self.stream), self.device)

    def add_targets(self, model: nn.Module, batch: dict) -> dict:
        return batch  # the labels

    def forward(self, model: nn.Module, batch: dict) -> dict:
        video, label = batch["video"], batch["label"]
        if self.mixup is not None:
            video, target = self.mixup(video, label)
            logits = model(video)
            return {"loss": torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()}
        logits = model(video)
        loss = F.cross_entropy(logits.float(), label, label_smoothing=self.cfg.finetune.label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(-1) == label).float().mean()}

    def count(self, batch: dict) -> dict[str, int]:
        return {"clips": len(batch["video"])}

    def init_weights(self, model: nn.Module, state: dict[str, torch.Tensor], source_cfg: Config | None) -> None:
        """Encoder weights of any bevt checkpoint (pretraining or finetuning); the pretrained final
        LayerNorm is `encoder.norm`. Bias tables are interpolated to this run's window. A stage-1
        (image-stream) checkpoint is inflated first: its video patch embedding and the bias rows
        of temporal offsets other than 0 were never trained."""
        encoder = {k: v for k, v in state.items() if k.startswith("encoder.")}
        if not encoder:
            raise CheckpointError(f"{self.cfg.run.init_from}: no encoder.* weights to finetune from")
        if _is_stage1(source_cfg):
            encoder = inflate_image_checkpoint(encoder, window_of(model.encoder))
        encoder = resize_bias_tables(encoder, window_of(model.encoder), self.cfg.finetune.bias_table_align_corners)
        load_strict(model, encoder, self.cfg.run.init_from, allow_missing=("head.",))
        log.info("initialised the encoder from %s; the head starts fresh", self.cfg.run.init_from)


class VQTokenizerTask:
    """Reconstruction of the image stream's tokenizer view (half the model input) through the
    codebook: mean squared error + the quantizer's commitment loss. The codebook itself follows
    the encoder by EMA inside the module's forward."""

    def __init__(self, cfg: Config, stream, device: torch.device):
        self.cfg = cfg
        self.stream = stream
        self.device = device
        self.batches_per_epoch = stream.batches_per_epoch
        self.streams = {"image": stream}
        self.class_names = None

    def next_batch(self) -> dict:
        return to_device(next(self.stream), self.device)

    def add_targets(self, model: nn.Module, batch: dict) -> dict:
        return batch  # the pixels are the targets

    def forward(self, model: nn.Module, batch: dict) -> dict:
        pixels = batch["image_tok"]  # (B,3,H/2,W/2) in [0, 1]
        reconstruction, ids, commit_loss = model(pixels)
        loss = F.mse_loss(reconstruction.float(), pixels) + commit_loss
        codes_used = torch.zeros(unwrap(model).vocab_size, device=ids.device).index_fill_(0, ids.flatten(), 1).mean()
        return {"loss": loss, "psnr": psnr(reconstruction.detach().float(), pixels).mean(), "codes_used": codes_used}

    def count(self, batch: dict) -> dict[str, int]:
        return {"images": len(batch["image_tok"])}

    def init_weights(self, model: nn.Module, state: dict[str, torch.Tensor], source_cfg: Config | None) -> None:
        load_strict(model, state, self.cfg.run.init_from)


def _is_stage1(source_cfg: Config | None) -> bool:
    """Whether a checkpoint's config is an image-stream (stage 1) pretraining run's: its video
    patch embedding and its bias rows of temporal offsets other than 0 were never trained."""
    return source_cfg is not None and source_cfg.task == "pretrain" and source_cfg.pretrain.streams == "image"


def _roots(keys: list[str]) -> list[str]:
    """Module prefixes of parameter names, for a short log line."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def check_finetune_labels(cfg: Config) -> Config:
    """Validate the training labels before anything runs, and return `cfg` with
    `finetune.num_classes` counted from the annotations when it was not given (class-name file,
    SSv2 labels, Kinetics labels or class folders), so the run's saved config rebuilds the same
    head for evaluate and predict. Out-of-range, negative or missing labels and a class list that
    disagrees with `finetune.num_classes` are a DataError naming file and line."""
    if cfg.task != "finetune":
        return cfg
    annotations = load_annotations(cfg.data.train, root=cfg.data.root, labels=cfg.data.labels)
    num_classes = cfg.finetune.num_classes
    if num_classes is None:
        num_classes = count_classes(cfg.data.train, annotations)
        log.info("finetune.num_classes=%d, counted from %s", num_classes, cfg.data.train)
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, num_classes=num_classes))
    check_labels(cfg.data.train, annotations.samples, annotations.class_names, num_classes)
    return cfg


def make_task(cfg: Config, rank: int, world_size: int, device: torch.device):
    """Build the task of `cfg` with its loaders."""
    data = cfg.data
    common = dict(seed=cfg.run.seed, rank=rank, world_size=world_size)
    skip_dir = Path(cfg.run.out) / "skipped"

    def stream(loader, key):
        if len(loader) == 0:
            raise DataError(f"{key}: {len(loader.dataset)} samples give no full batch of {loader.batch_size} "
                            f"on each of {world_size} process(es)")
        return BatchStream(loader, SkipCounter(data.max_skip_fraction), skip_dir, rank)

    if cfg.task == "tokenizer":
        return VQTokenizerTask(cfg, stream(loaders.build_image_pretrain_loader(data, None, **common), "data.images"),
                               device)
    if cfg.task == "finetune":
        loader = loaders.build_finetune_loader(data, **common)
        class_names = loader.dataset.class_names  # read with the annotations, not a second time
        return FinetuneTask(cfg, stream(loader, "data.train"), class_names, device)

    masking = cfg.masking
    grid = (data.size // CELL, data.size // CELL)
    mask_options = dict(ratio=masking.ratio, min_cells=masking.min_cells)
    streams = {}
    if cfg.pretrain.streams in ("image", "joint"):
        image_masks = build_mask_generator("blockwise", grid, **mask_options)
        streams["image"] = stream(loaders.build_image_pretrain_loader(data, image_masks, **common), "data.images")
    if cfg.pretrain.streams in ("video", "joint"):
        video_masks = build_mask_generator(masking.video, (data.frames // 2, *grid), tube_length=masking.tube_length,
                                           wrap=masking.wrap, **mask_options)
        streams["video"] = stream(loaders.build_video_pretrain_loader(data, video_masks, **common), "data.train")
    return PretrainTask(cfg, streams, device)
