"""Augmentations draw their parameters once per clip: every frame gets the same crop, flip,
RandAugment ops and erasing box, so they never invent motion."""

import numpy as np
import pytest
import torch

from bevt.config import load_config
from bevt.data.randaugment import ImgaugRandAugment
from bevt.data.synthetic import render_image
from bevt.data.transforms import (
    MEAN,
    STD,
    EvalTransform,
    FinetuneTransform,
    PretrainTransform,
    VideoMixup,
    resize_lanczos4_like_opencv,
    seeded,
    tokenizer_view,
)


def still_clip(frames: int = 6, height: int = 40, width: int = 52) -> np.ndarray:
    """A clip whose frames are all the same picture: any per-frame difference after a transform
    means the frames were augmented differently."""
    picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.repeat(picture[None], frames, axis=0)


def assert_frames_identical(clip: torch.Tensor) -> None:
    """clip: (3,T,H,W)."""
    for t in range(1, clip.shape[1]):
        torch.testing.assert_close(clip[:, t], clip[:, 0], rtol=0, atol=0)


def unnormalize(view: torch.Tensor) -> torch.Tensor:
    return view * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)


@pytest.mark.parametrize("seed", range(4))
def test_pretrain_views_same_for_every_frame_and_from_the_same_crop(seed):
    transform = PretrainTransform(32, color_jitter=0.4)
    with seeded(seed):
        out = transform(still_clip())
    view, tok = out["view"], out["tok"]
    assert view.shape == (3, 6, 32, 32) and tok.shape == (3, 6, 16, 16)
    assert 0 <= tok.min() and tok.max() <= 1
    assert_frames_identical(view)
    assert_frames_identical(tok)
    # the tokenizer view is the model view's crop at half size
    model_pixels = unnormalize(view)[:, 0]
    halved = torch.nn.functional.avg_pool2d(model_pixels[None], 2)[0]
    assert (halved - tok[:, 0]).abs().mean() < 0.06


@pytest.mark.parametrize("seed", range(4))
def test_finetune_randaugment_and_erasing_same_for_every_frame(seed):
    transform = FinetuneTransform(32, flip=0.5, randaugment=(4, 7), erasing=1.0)
    with seeded(seed):
        clip = transform(still_clip())
    assert clip.shape == (3, 6, 32, 32)
    assert_frames_identical(clip)
    assert (clip == 0).all(dim=(0, 1)).any()  # the erased box: zeros in every channel and frame


def test_augmentation_depends_only_on_the_seed():
    transform = FinetuneTransform(32, randaugment=(2, 9), erasing=0.5)
    frames = still_clip()
    with seeded(3):
        first = transform(frames)
    torch.manual_seed(123)  # the caller's global state must not matter, nor be changed
    state = torch.get_rng_state()
    with seeded(3):
        second = transform(frames)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


def test_eval_three_crops_cover_the_long_side():
    frames = np.zeros((4, 40, 80, 3), np.uint8)
    frames[..., :20, 0] = 255  # left quarter red
    frames[..., 60:, 2] = 255  # right quarter blue
    views = EvalTransform(20, num_crops=3)(frames)  # short side 40 -> 20, long side 80 -> 40
    assert views.shape == (3, 3, 4, 20, 20)
    left, centre, right = (unnormalize(view) for view in views)  # (3,T,H,W) each, in [0,1]
    assert left[0].mean() > 0.45 and left[2].mean() < 0.05  # the red quarter is in the left half
    assert right[2].mean() > 0.45 and right[0].mean() < 0.05
    assert centre[0].mean() < 0.05 and centre[2].mean() < 0.05
    assert EvalTransform(20, num_crops=1)(frames).shape == (1, 3, 4, 20, 20)


def test_video_mixup_gives_soft_targets_and_one_box_per_clip():
    mixup = VideoMixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    video = torch.stack([torch.full((3, 4, 16, 16), float(i)) for i in range(4)])
    mixed, target = mixup(video, torch.tensor([0, 1, 2, 3]))
    assert mixed.shape == video.shape and target.shape == (4, 5)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    for clip in mixed:  # cutmix pasted the same box into every frame
        assert_frames_identical(clip)


def test_randaugment_impl_picks_imgaugs_or_torchvisions():
    official = FinetuneTransform(32, randaugment=(4, 7))
    assert isinstance(official.uint8_steps.transforms[-1], ImgaugRandAugment)
    torchvision = FinetuneTransform(32, randaugment=(4, 7), randaugment_impl="torchvision")
    assert torchvision.uint8_steps.transforms[-1].num_magnitude_bins == 11
    with seeded(0):
        clip = torchvision(still_clip())
    assert_frames_identical(clip)
    with pytest.raises(ValueError, match="randaugment_impl"):
        FinetuneTransform(32, randaugment=(4, 7), randaugment_impl="timm")


def test_paper_recipes_use_the_released_augmentation_and_tokenizer_resize():
    assert load_config("swin_b_finetune_ssv2").data.randaugment_impl == "official"
    for recipe in ("swin_b_stage1_in1k", "swin_b_joint_in1k_k400", "swin_b_video_k400", "swin_t_table8_tube",
                   "swin_t_table8_frame_diff", "swin_t_table8_random_frame", "swin_t_table8_random3d"):
        assert load_config(recipe).data.tokenizer_resize == "official", recipe
    for recipe in ("tiny_image", "tiny_video", "tiny_joint"):
        assert load_config(recipe).data.tokenizer_resize == "pil", recipe


def test_official_resize_is_opencvs_lanczos4_bit_for_bit():
    cv2 = pytest.importorskip("cv2")  # test-only reference
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), render_image(rng, 224, 2)]
    pictures += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(32, 32, 3), (64, 48, 3), (160, 96, 3)]]
    pictures.append(np.where(rng.random((96, 96, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, 2))  # hard edges
    for picture in pictures:
        height, width = picture.shape[:2]
        for out_h, out_w in [(height // 2, width // 2), (height // 3 + 1, width // 2 + 3), (height + 5, width)]:
            expected = cv2.resize(picture, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
            got = resize_lanczos4_like_opencv(torch.from_numpy(picture).permute(2, 0, 1), out_h, out_w)
            np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected, err_msg=f"{picture.shape} -> {out_h}x{out_w}")


@pytest.mark.parametrize("seed", range(3))
def test_official_tokenizer_view_is_opencvs_resize_of_the_model_crop(seed):
    cv2 = pytest.importorskip("cv2")  # test-only reference
    frames = np.stack([render_image(np.random.default_rng(seed + t), 64, t) for t in range(3)])
    with seeded(seed):
        official = PretrainTransform(32, tokenizer_resize="official")(frames)
    with seeded(seed):
        pil = PretrainTransform(32, tokenizer_resize="pil")(frames)
    assert torch.equal(official["view"], pil["view"])  # the same crop; only the tokenizer view differs
    crop = (unnormalize(official["view"]) * 255).round().to(torch.uint8)  # (3,T,32,32)
    for t in range(3):
        expected = cv2.resize(crop[:, t].permute(1, 2, 0).numpy(), (16, 16), interpolation=cv2.INTER_LANCZOS4)
        np.testing.assert_array_equal((official["tok"][:, t] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), expected)
    assert (official["tok"] - pil["tok"]).abs().max() > 0  # PIL's antialiased Lanczos is another filter
    with pytest.raises(ValueError, match="tokenizer resize"):
        tokenizer_view(crop.transpose(0, 1), 16, resize="cv2")
