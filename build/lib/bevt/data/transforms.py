"""Clip-consistent augmentations on uint8 videos (torchvision.transforms.v2).

A clip is wrapped as a `tv_tensors.Video` (T,3,H,W), for which v2 draws each random parameter
once and applies it to every frame: the same crop, flip, RandAugment ops and erasing box on all
frames, so augmentation never invents motion. Images go through the same code as one-frame clips.

Randomness comes from torch's global generator; datasets call transforms inside
`seeded(seed)` so that a sample's augmentation depends only on its own seed.

Outputs are channels-first clips, (3,T,H,W), as the model wants them.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from torchvision import tv_tensors
from torchvision.transforms import v2

from bevt.data.randaugment import ImgaugRandAugment

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with torch's CPU generator seeded, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def to_video(frames) -> tv_tensors.Video:
    """uint8 (T,H,W,3) numpy/tensor -> tv_tensors.Video (T,3,H,W)."""
    frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T,H,W,3), got {tuple(frames.shape)} {frames.dtype}")
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))


_MEAN_255 = torch.tensor(MEAN).view(3, 1, 1, 1) * 255
_INV_STD_255 = 1 / (torch.tensor(STD).view(3, 1, 1, 1) * 255)


def normalize(video: torch.Tensor) -> torch.Tensor:
    """uint8 (T,3,H,W) -> float (3,T,H,W) with ImageNet mean/std (the model view).

    Transposed while still uint8 and normalised in place: half the memory traffic of the
    straightforward float -> /255 -> normalise -> transpose."""
    x = video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous().float()
    return x.sub_(_MEAN_255).mul_(_INV_STD_255)


TOKENIZER_RESIZES = ("official", "pil")


def tokenizer_view(video: torch.Tensor, size: int, resize: str = "pil") -> torch.Tensor:
    """uint8 (T,3,H,W) crop -> float (3,T,size,size) in [0,1], Lanczos-resized for the tokenizer.

    `resize="pil"`: PIL's antialiased Lanczos (a=3), the DALL-E / BEiT convention.
    `resize="official"`: OpenCV's `INTER_LANCZOS4` (8 taps, not antialiased), which the released
    BEVT pipeline uses (`mmcv.imresize(..., "lanczos")`); reproduced bit-exactly in torch."""
    if resize == "official":
        x = resize_lanczos4_like_opencv(video.as_subclass(torch.Tensor), size, size)
        return x.float().div_(255).permute(1, 0, 2, 3).contiguous()
    if resize != "pil":
        raise ValueError(f"unknown tokenizer resize {resize!r}; choose from {', '.join(TOKENIZER_RESIZES)}")
    frames = [
        np.asarray(Image.fromarray(frame.permute(1, 2, 0).numpy()).resize((size, size), Image.LANCZOS))
        for frame in video
    ]
    x = torch.from_numpy(np.stack(frames)).float().div_(255)  # (T,size,size,3)
    return x.permute(3, 0, 1, 2).contiguous()


_OPENCV_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: 8-bit resizes use 11-bit integer weights


@functools.lru_cache(maxsize=16)
def _opencv_lanczos4_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(in_size, out_size) integer weights of cv2.resize(INTER_LANCZOS4) along one axis, in units of
    1/2048, computed in float32 as OpenCV computes them (imgproc/src/resize.cpp: `interpolateLanczos4`
    and the fixed-point set-up of `resize` for 8-bit images).

    Output pixel d is centred on source position p = (d + 0.5) * in/out - 0.5 and reads the 8
    pixels floor(p) - 3 .. floor(p) + 4; those outside the image repeat the edge pixel (no
    antialiasing when downscaling: the kernel is not widened). A tap at distance t from p weighs
    sinc(t) sinc(t / 4) (OpenCV evaluates it through the phase table below), the 8 weights are
    normalised to sum 1 in float32 and rounded to multiples of 1/2048, so they may sum to a few
    units less (2046 for the 2x downscale's fixed weights)."""
    scale = 1.0 / (out_size / in_size)  # OpenCV stores the inverse scale and inverts it
    half_sqrt2 = math.sqrt(0.5)
    phases = ((1, 0), (-half_sqrt2, -half_sqrt2), (0, 1), (half_sqrt2, -half_sqrt2),
              (-1, 0), (half_sqrt2, half_sqrt2), (0, -1), (-half_sqrt2, half_sqrt2))  # fmt: skip
    matrix = np.zeros((in_size, out_size), np.float64)
    for d in range(out_size):
        position = np.float32((d + 0.5) * scale - 0.5)
        start = math.floor(position)
        fraction = float(np.float32(position - start))
        taps = np.zeros(8, np.float32)
        if fraction < np.finfo(np.float32).eps:
            taps[3] = 1
        else:
            angle0 = -(fraction + 3) * math.pi / 4
            sin0, cos0 = math.sin(angle0), math.cos(angle0)
            total = np.float32(0)
            for j, (a, b) in enumerate(phases):
                angle = -(fraction + 3 - j) * math.pi / 4
                taps[j] = np.float32((a * sin0 + b * cos0) / (angle * angle))
                total = np.float32(total + taps[j])
            taps = taps * (np.float32(1) / total)
        sources = np.clip(np.arange(start - 3, start + 5), 0, in_size - 1)
        np.add.at(matrix[:, d], sources, np.rint(taps * np.float32(1 << _OPENCV_COEF_BITS)))
    return torch.from_numpy(matrix)


def resize_lanczos4_like_opencv(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (...,H,W) -> uint8 (...,height,width), equal to cv2.resize(..., INTER_LANCZOS4) per plane.

    OpenCV resizes 8-bit images in integers: a horizontal pass with 11-bit weights kept at full
    precision, a vertical pass with the same kind of weights, then (sum + 2^21) >> 22 saturated to
    [0, 255]. Both passes are matrix products here; every partial sum is an integer that float32
    (horizontal, |sum| < 2^20) or float64 (vertical, < 2^32) holds exactly, so the result is bit-exact."""
    if images.dtype != torch.uint8:
        raise ValueError(f"the OpenCV Lanczos resize is defined here for uint8 images, got {images.dtype}")
    columns = _opencv_lanczos4_matrix(images.shape[-1], width).float()
    rows = _opencv_lanczos4_matrix(images.shape[-2], height).T
    horizontal = images.float() @ columns  # (...,H,width)
    vertical = rows @ horizontal.double()  # (...,height,width)
    shift = 1 << 2 * _OPENCV_COEF_BITS
    return vertical.add_(shift // 2).div_(shift).floor_().clamp_(0, 255).to(torch.uint8)


def _default_short_side(size: int) -> tuple[int, int]:
    """The paper's 256-320 range for a 224 crop, scaled to other crop sizes."""
    return round(size * 256 / 224), round(size * 320 / 224)


class PretrainTransform:
    """Pretraining views: short side to a random length in `short_side`, random crop `size`,
    horizontal flip, optional colour jitter (images: 0.4/0.4/0.4); returns the normalised model
    view and the half-size tokenizer view, cut from the very same crop and resized by
    `tokenizer_resize` (see `tokenizer_view`).

    Call with uint8 (T,H,W,3); returns {"view": (3,T,size,size), "tok": (3,T,tok,tok)}.
    """

    def __init__(
        self,
        size: int = 224,
        short_side: tuple[int, int] | None = None,
        flip: float = 0.5,
        color_jitter: float = 0.0,
        tokenizer_size: int | None = None,
        tokenizer_resize: str = "pil",
    ):
        if tokenizer_resize not in TOKENIZER_RESIZES:
            raise ValueError(f"unknown tokenizer resize {tokenizer_resize!r}; choose from {TOKENIZER_RESIZES}")
        low, high = short_side or _default_short_side(size)
        if low < size or high < low:
            raise ValueError(f"short_side range ({low}, {high}) must satisfy size {size} <= low <= high")
        steps = [
            v2.RandomShortestSize(list(range(low, high + 1)), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(flip),
        ]
        if color_jitter > 0:
            steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        self.geometry = v2.Compose(steps)
        self.tokenizer_size = tokenizer_size or size // 2
        self.tokenizer_resize = tokenizer_resize

    def __call__(self, frames) -> dict[str, torch.Tensor]:
        crop = self.geometry(to_video(frames))
        return {"view": normalize(crop), "tok": tokenizer_view(crop, self.tokenizer_size, self.tokenizer_resize)}


class FinetuneTransform:
    """Finetuning: RandomResizedCrop, flip, RandAugment (same ops on every frame), normalise,
    random erasing (same box on every frame). SSv2 recipe: flip=0, randaugment=(4, 7),
    erasing=0.25; K400: flip=0.5 and neither of the others.

    `randaugment=(n, m)` with `randaugment_impl`:
    - "official": imgaug 0.4.0's RandAugment as the released SSv2 recipe runs it (`ImgaugRandAugment`):
      it adds its own flip (p=0.5) and a crop of up to m/224 per side, and m is out of 30
      (m=7: rotate +-7 deg, translate +-7.7%), 18 ops, fill 128;
    - "torchvision": `v2.RandAugment` with 11 magnitude bins, so m is out of 10 of torchvision's
      maxima (m=7: rotate +-21 deg, translate +-32%), 14 ops, fill 0, no flip or crop of its own.
    Returns float (3,T,size,size).
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        flip: float = 0.5,
        randaugment: tuple[int, int] | None = None,
        erasing: float = 0.0,
        randaugment_impl: str = "official",
    ):
        steps = [v2.RandomResizedCrop(size, scale=scale, antialias=True)]
        if flip > 0:
            steps.append(v2.RandomHorizontalFlip(flip))
        if randaugment is not None:
            num_ops, magnitude = randaugment
            if randaugment_impl == "official":
                steps.append(ImgaugRandAugment(num_ops, magnitude))
            elif randaugment_impl == "torchvision":
                steps.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=11))
            else:
                raise ValueError(f"unknown randaugment_impl {randaugment_impl!r}; choose 'official' or 'torchvision'")
        self.uint8_steps = v2.Compose(steps)
        self.erasing = v2.RandomErasing(p=erasing, value=0.0) if erasing > 0 else None

    def __call__(self, frames) -> torch.Tensor:
        clip = self.uint8_steps(to_video(frames))
        x = normalize(clip)  # (3,T,H,W)
        if self.erasing is not None:
            # v2 erases the last two dims of any leading shape: one box for all channels and frames.
            x = self.erasing(tv_tensors.Video(x))
        return x.as_subclass(torch.Tensor)


class EvalTransform:
    """Evaluation: short side resized to `size`, then `num_crops` (1 or 3) crops of `size`
    along the long side (left/centre/right or top/middle/bottom). Returns (V,3,T,size,size)."""

    def __init__(self, size: int = 224, num_crops: int = 3):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.size = size
        self.num_crops = num_crops

    def __call__(self, frames) -> torch.Tensor:
        clip = v2.functional.resize(to_video(frames), self.size, antialias=True)
        height, width = clip.shape[-2:]
        long_side = max(height, width)
        centre = (long_side - self.size) // 2
        offsets = [centre] if self.num_crops == 1 else [0, centre, long_side - self.size]
        crops = []
        for offset in offsets:
            top, left = (offset, (width - self.size) // 2) if height > width else ((height - self.size) // 2, offset)
            crops.append(normalize(v2.functional.crop(clip, top, left, self.size, self.size)))
        return torch.stack(crops)


class VideoMixup:
    """timm's Mixup/CutMix (with label smoothing) for clips (B,3,T,H,W).

    timm cuts boxes on the last two dims of a 4D batch, so clips are viewed as (B,3T,H,W): the
    same box on every frame. timm draws from numpy's global generator: seed it per step for
    bit-exact resumes. The batch size must be even.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, label_smoothing: float = 0.1
    ):
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, video: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> mixed clips (B,3,T,H,W) and soft targets (B,num_classes)."""
        batch, channels, frames, height, width = video.shape
        mixed, target = self.mixup(video.reshape(batch, channels * frames, height, width), label)
        return mixed.reshape(batch, channels, frames, height, width), target
