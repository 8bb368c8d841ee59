"""Loaders: batch formats, the resumable sampler, sharding, and per-sample determinism."""

import pytest
import torch

from bevt.data.datasets import ImageDataset, load_annotations
from bevt.config import DataConfig, EvalConfig
from bevt.data.loader import (
    ResumableLoader,
    ResumableSampler,
    build_eval_loader,
    build_finetune_loader,
    build_image_pretrain_loader,
    build_video_pretrain_loader,
)
from bevt.data.synthetic import make_synthetic_benchmark
from bevt.data.transforms import PretrainTransform
from bevt.errors import DataError


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_synthetic_benchmark(
        tmp_path_factory.mktemp("bench"), seed=1, size=32, frames=8, images_per_class=2, val_images_per_class=1,
        videos_per_class=2, val_videos_per_class=1,
    )


def video_masks(generator):
    return torch.rand(2, 2, 2, generator=generator) > 0.5  # (T',H/16,W/16) for 4 frames at 32 px


def image_masks(generator):
    return torch.rand(2, 2, generator=generator) > 0.5


def test_batch_formats(bench):
    images = next(iter(build_image_pretrain_loader(
        DataConfig(images=bench["images_train"], image_batch_size=3, size=32, short_side=(32, 40), workers=0),
        image_masks)))
    assert images["image"].shape == (3, 3, 32, 32) and images["image_tok"].shape == (3, 3, 16, 16)
    assert images["mask"].shape == (3, 2, 2) and images["mask"].dtype == torch.bool
    videos = next(iter(build_video_pretrain_loader(
        DataConfig(train=bench["spatial_train"], video_batch_size=2, frames=4, interval=2, size=32,
                   short_side=(32, 40), workers=0),
        video_masks)))
    assert videos["video"].shape == (2, 3, 4, 32, 32) and videos["video_tok"].shape == (2, 3, 4, 16, 16)
    assert videos["mask"].shape == (2, 2, 2, 2) and videos["skipped"] == []
    finetune = next(iter(build_finetune_loader(DataConfig(
        train=bench["temporal_ssv2_train"], labels=bench["temporal_ssv2_labels"], video_batch_size=2,
        sampling="segment", frames=4, size=32, short_side=(32, 40), flip=False, randaugment=(2, 7),
        random_erasing=0.25, workers=0,
    ))))
    assert finetune["video"].shape == (2, 3, 4, 32, 32) and finetune["label"].dtype == torch.long
    evaluation = build_eval_loader(
        DataConfig(val=bench["spatial_val"], labels=bench["spatial_classes"], frames=4, interval=2, size=32,
                   short_side=(32, 40), workers=0),
        EvalConfig(clips=2, crops=3, batch_size=4))
    batches = list(evaluation)
    assert batches[0]["video"].shape == (4, 6, 3, 4, 32, 32)
    assert sum(len(b["label"]) for b in batches) == 8  # every sample once, none dropped
    assert len(list(evaluation)) == len(batches)  # evaluation starts over on every pass
    assert evaluation.dataset.class_names[0] == "00_red_disc"


def keys(sampler: ResumableSampler) -> list:
    return list(iter(sampler))


def test_sampler_shuffles_per_epoch_and_shards_by_rank():
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [index for r in ranks for _, index in keys(r)]
    assert sorted(first) == list(range(10))  # the two ranks split the epoch
    for r in ranks:
        r.set_epoch(1)
    second = [index for r in ranks for _, index in keys(r)]
    assert sorted(second) == list(range(10)) and second != first
    assert keys(ResumableSampler(10, seed=3, rank=0, world_size=2)) == [(0, i) for i in first[:5]]
    padded = [ResumableSampler(5, seed=0, rank=r, world_size=2) for r in range(2)]
    assert [len(keys(r)) for r in padded] == [3, 3]  # training pads to equal shares
    exact = [ResumableSampler(5, shuffle=False, rank=r, world_size=2, pad=False) for r in range(2)]
    assert [index for r in exact for _, index in keys(r)] == [0, 2, 4, 1, 3]


def image_loader(bench, seed=0):
    found = load_annotations(bench["images_train"])
    dataset = ImageDataset(found.samples, PretrainTransform(32, color_jitter=0.4), seed=seed,
                           mask_generator=image_masks)
    return ResumableLoader(dataset, ResumableSampler(len(dataset), seed=seed), batch_size=3, drop_last=True)


def test_resume_mid_epoch_gives_the_same_samples_augmentations_and_masks(bench):
    uninterrupted = image_loader(bench)
    uninterrupted.set_epoch(2)
    expected = list(uninterrupted)

    interrupted = image_loader(bench)
    interrupted.set_epoch(2)
    stream = iter(interrupted)
    seen = [next(stream), next(stream)]
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["index"] == 6

    resumed = image_loader(bench)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what a loop does on entering the epoch: keeps the restored position
    assert len(resumed) == len(expected) - 2
    rest = list(resumed)
    for got, want in zip(seen + rest, expected, strict=True):
        assert torch.equal(got["index"], want["index"])
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["image_tok"], want["image_tok"])
        assert torch.equal(got["mask"], want["mask"])
    assert list(resumed) == []  # a finished epoch stays finished until set_epoch(e + 1)
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(expected)

    with pytest.raises(DataError, match="cannot resume the data order"):
        image_loader(bench, seed=1).load_state_dict(state)


def test_samples_do_not_depend_on_worker_processes(bench):
    def first_batch(workers):
        data = DataConfig(train=bench["temporal_train"], video_batch_size=4, frames=4, interval=1, size=32,
                          short_side=(32, 40), workers=workers)
        loader = build_video_pretrain_loader(data, video_masks, seed=5)
        loader.set_epoch(1)
        return next(iter(loader))

    in_process, in_workers = first_batch(0), first_batch(2)
    for key in ("index", "video", "video_tok", "mask"):
        assert torch.equal(in_process[key], in_workers[key])
