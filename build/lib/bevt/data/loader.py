"""Loaders: image and video pretraining, finetuning, evaluation, with exact resume.

`ResumableSampler` yields `(epoch, index)` keys: shuffled by (seed, epoch), sharded by rank, and
able to start in the middle of an epoch. `ResumableLoader` wraps a DataLoader over it and counts
only the batches it handed to the caller (a DataLoader prefetches ahead), so its `state_dict()`
is the exact position of the training loop. Since each sample seeds its own randomness from
(seed, epoch, index), a resumed run sees the same clips with the same augmentations and masks.

Worker processes are seeded by the DataLoader from a generator that is re-seeded from
(seed, epoch, rank) at the start of every epoch, so any global-RNG use in user transforms is
reproducible too. Workers ignore SIGINT and SIGTERM: stopping is the training process's job
(it finishes the step, checkpoints, and then shuts its workers down).
"""

from __future__ import annotations

import logging
import math
import signal

import torch

from bevt.config import DataConfig, EvalConfig
from bevt.data.datasets import ImageDataset, VideoDataset, collate, load_annotations, sample_seed
from bevt.data.sampling import IntervalSampler, SegmentSampler
from bevt.data.transforms import EvalTransform, FinetuneTransform, PretrainTransform
from bevt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_ORDER_STREAM, _WORKER_STREAM = 10, 11


class ResumableSampler(torch.utils.data.Sampler):
    """(epoch, index) keys for one rank.

    The epoch's global order is a permutation seeded by (seed, epoch) (or 0..N-1 without
    shuffling); rank r takes every world_size-th entry from r. With `pad=True` (training) the
    order is extended by its first entries so that every rank gets the same count; evaluation
    uses `pad=False` so no sample is counted twice.

    The state is (epoch, index): `index` counts samples of the global order already consumed by
    all ranks, so a run may resume on another number of ranks.
    """

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.position = 0  # samples of this rank's share already consumed in `epoch`

    def rank_order(self) -> list[int]:
        """This rank's dataset indices for the current epoch, from its beginning."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0, _ORDER_STREAM))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.num_samples))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        # Built eagerly: the DataLoader reads the position when an epoch starts, not lazily later.
        return iter([(self.epoch, index) for index in self.rank_order()[self.position :]])

    def __len__(self) -> int:
        if self.pad:
            per_rank = math.ceil(self.num_samples / self.world_size)
        else:
            per_rank = len(range(self.rank, self.num_samples, self.world_size))
        return per_rank - self.position

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (unless a restored state put us inside it)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def advance(self, count: int) -> None:
        """Record that the caller consumed `count` more samples of this rank's share."""
        self.position += count

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.position * self.world_size, "seed": self.seed,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise DataError(
                f"cannot resume the data order: saved for {state['num_samples']} samples with seed {state['seed']}, "
                f"now {self.num_samples} samples with seed {self.seed}"
            )
        self.epoch = state["epoch"]
        self.position = state["index"] // self.world_size
        if state["index"] % self.world_size:
            log.warning("resuming on %d ranks: %d samples of the epoch are seen twice", self.world_size,
                        state["index"] % self.world_size)


class ResumableLoader:
    """A DataLoader over a `ResumableSampler` whose state counts delivered batches only.

    Use: `loader.set_epoch(e)`, `for batch in loader: ...`; save `loader.state_dict()` with a
    checkpoint and call `loader.load_state_dict(s)` before iterating to continue exactly there.
    A finished epoch stays finished (iterating again yields nothing) until `set_epoch(e + 1)`,
    so a state saved after an epoch's last batch resumes correctly. With `rewind=True`
    (evaluation) every iteration starts the epoch from its beginning instead.
    """

    def __init__(self, dataset, sampler: ResumableSampler, *, batch_size: int, num_workers: int = 0,
                 drop_last: bool = False, rewind: bool = False):
        self.dataset = dataset
        self.rewind = rewind
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.worker_seeds = torch.Generator()
        self.dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available(),
            generator=self.worker_seeds,
            worker_init_fn=_leave_signals_to_the_main_process,
        )

    def __iter__(self):
        sampler = self.sampler
        if self.rewind:
            sampler.position = 0
        self.worker_seeds.manual_seed(sample_seed(sampler.seed, sampler.epoch, sampler.rank, _WORKER_STREAM))
        for batch in self.dataloader:
            sampler.advance(len(batch["index"]))
            yield batch

    def __len__(self) -> int:
        remaining = len(self.sampler)
        return remaining // self.batch_size if self.drop_last else math.ceil(remaining / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group and schedulers signal every process
    of a job; a worker that died of it would fail the step the run is finishing before its
    checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(dataset, *, batch_size, train, seed, num_workers, rank, world_size) -> ResumableLoader:
    sampler = ResumableSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    return ResumableLoader(dataset, sampler, batch_size=batch_size, num_workers=num_workers, drop_last=train,
                           rewind=not train)


def clip_sampler(data: DataConfig):
    """`data.sampling`: "interval" (`frames` frames `interval` apart) or "segment" (`frames` segments)."""
    if data.sampling == "interval":
        return IntervalSampler(data.frames, data.interval)
    if data.sampling == "segment":
        return SegmentSampler(data.frames)
    raise DataError(f"unknown sampling {data.sampling!r}; choose 'interval' or 'segment'")


def build_image_pretrain_loader(data: DataConfig, mask_generator, *, seed: int = 0, rank: int = 0,
                                world_size: int = 1) -> ResumableLoader:
    """Image stream of `data.images` -> {"image", "image_tok", "mask", ...}; videos in it give one
    random frame per sample (paper Table 7: the image stream fed with frames of K400)."""
    annotations = load_annotations(data.images, root=data.root)
    transform = PretrainTransform(data.size, data.short_side, color_jitter=data.color_jitter,
                                  tokenizer_resize=data.tokenizer_resize)
    dataset = ImageDataset(annotations.samples, transform, seed=seed, mask_generator=mask_generator,
                           class_names=annotations.class_names)
    return _loader(dataset, batch_size=data.image_batch_size, train=True, seed=seed, num_workers=data.workers,
                   rank=rank, world_size=world_size)


def build_video_pretrain_loader(data: DataConfig, mask_generator, *, seed: int = 0, rank: int = 0,
                                world_size: int = 1) -> ResumableLoader:
    """Video stream of `data.train` (any annotation format) -> {"video", "video_tok", "mask", ...}."""
    found = load_annotations(data.train, root=data.root, labels=data.labels)
    dataset = VideoDataset(
        found.samples, IntervalSampler(data.frames, data.interval),
        PretrainTransform(data.size, data.short_side, tokenizer_resize=data.tokenizer_resize),
        seed=seed, mask_generator=mask_generator, class_names=found.class_names,
    )
    return _loader(dataset, batch_size=data.video_batch_size, train=True, seed=seed, num_workers=data.workers,
                   rank=rank, world_size=world_size)


def build_finetune_loader(data: DataConfig, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> ResumableLoader:
    """Finetuning on `data.train`: {"video" (B,3,T,H,W), "label", ...}; shuffled, padded, last batch dropped."""
    found = load_annotations(data.train, root=data.root, labels=data.labels)
    transform = FinetuneTransform(data.size, scale=data.crop_scale, flip=0.5 if data.flip else 0.0,
                                  randaugment=data.randaugment, erasing=data.random_erasing,
                                  randaugment_impl=data.randaugment_impl)
    dataset = VideoDataset(found.samples, clip_sampler(data), transform, seed=seed, class_names=found.class_names)
    return _loader(dataset, batch_size=data.video_batch_size, train=True, seed=seed, num_workers=data.workers,
                   rank=rank, world_size=world_size)


def build_eval_loader(data: DataConfig, views: EvalConfig, *, rank: int = 0, world_size: int = 1) -> ResumableLoader:
    """Evaluation on `data.val`: {"video" (B,V,3,T,H,W), "label", "index", ...} with V = clips x crops
    of `views`; in file order, sharded without padding (every sample is seen once over all ranks)."""
    if data.val is None:
        raise ConfigError("data.val: is required for evaluation (the annotations of the test videos)")
    found = load_annotations(data.val, root=data.root, labels=data.labels)
    dataset = VideoDataset(
        found.samples, clip_sampler(data), EvalTransform(data.size, views.crops),
        train=False, num_clips=views.clips, class_names=found.class_names,
    )
    return _loader(dataset, batch_size=views.batch_size, train=False, seed=0, num_workers=data.workers,
                   rank=rank, world_size=world_size)
