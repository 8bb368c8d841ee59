"""imgaug 0.4.0's `RandAugment(n, m)` on torchvision v2 ops: the SSv2 augmentation of the released BEVT.

The released SSv2 recipe calls `imgaug.augmenters.RandAugment(n=4, m=7)` made deterministic per clip,
so every frame gets the same flip, crop and ops. imgaug's version is not torchvision's: it always
starts with a horizontal flip and a small crop, its magnitudes run on a 0..30 scale, a fixed `m`
gives a fixed strength with a random sign, and its op set differs. imgaug itself no longer imports
on NumPy >= 1.24, so this module re-implements it; every number below was read from the imgaug
0.4.0 source (tag 0.4.0 of aleju/imgaug) and checked against imgaug 0.4.0 running under NumPy 1.23.

Always first (`collections.py`, `RandAugment._create_initial_augmenters_list`):
- horizontal flip with p=0.5 (`flip.Fliplr(0.5)`);
- crop each side by round(side * U(0, m) / 224) pixels, drawn independently per side, then resize
  back to the input size bilinearly (`size.Crop(percent=U(0, m)/224)` in
  `size.KeepSizeByResize(interpolation="linear")`; pixels from `size.CropAndPad._draw_samples`).

Then `n` distinct ops out of these 18, in random order (`meta.SomeOf(n, ..., random_order=True)`),
with s = m / 30 (`RandAugment._M_MAX = 30`; `_float_parameter(m, max) = m * (max / 30)`) and a sign
drawn with p=0.5 for every signed op (`iap.RandomSign`). Fill value 128 (`RandAugment(cval=128)`).

Sources: imgaug/augmenters/{collections,pillike,arithmetic,meta,size}.py and imgaug/parameters.py.

| op | parameter from m (imgaug 0.4.0) | m=7 | source |
|---|---|---|---|
| Identity | - | - | `meta.Identity` |
| Autocontrast | per-channel min/max stretch, cutoff 0 | - | `pillike.Autocontrast(cutoff=0)` |
| Equalize | per-channel equalisation, step = (pixels below 255) // 255 | - | `pillike._equalize_no_pil_` (1) |
| Invert | 255 - v | - | `arithmetic.Invert(p=1.0)` |
| Rotate | +-30 s degrees about the image centre | +-7.0 deg | `pillike.Affine(rotate=..., center=(0.5, 0.5))` |
| Posterize | keep 8 - min(int(6 s), 6) bits | 7 bits | `pillike.Posterize` |
| Solarize | invert v >= 256 - int(256 s), clipped to [0, 256] | 197 | `pillike.Solarize(p=1.0)`, `arithmetic.invert_` |
| Color | PIL `ImageEnhance.Color`, factor 1 +- 0.9 s, clipped to [0.1, 1.9] | 0.79 / 1.21 | `pillike.EnhanceColor` |
| Contrast | PIL `ImageEnhance.Contrast`, same factor | 0.79 / 1.21 | `pillike.EnhanceContrast` |
| Brightness | PIL `ImageEnhance.Brightness`, same factor | 0.79 / 1.21 | `pillike.EnhanceBrightness` |
| Sharpness | PIL `ImageEnhance.Sharpness`, same factor | 0.79 / 1.21 | `pillike.EnhanceSharpness` |
| ShearX | x += tanh(a) y about the top-left corner, a = +-s degrees(0.3) | +-4.01 deg | `pillike.Affine` (2) |
| ShearY | y += tanh(a) x, same a | +-4.01 deg | `pillike.Affine` (2) |
| TranslateX | +-0.33 s of the width | +-7.7% | `pillike.Affine(translate_percent=...)` |
| TranslateY | +-0.33 s of the height | +-7.7% | `pillike.Affine(translate_percent=...)` |
| Cutout | a square of side min(s 20/32, 20/32) x height, uniform centre, fill 128 | 0.146 | `arithmetic.Cutout` |
| Blur | PIL `ImageFilter.BLUR` (5x5 ring / 16) | - | `pillike.FilterBlur` |
| Smooth | PIL `ImageFilter.SMOOTH` (3x3, centre 5, / 13) | - | `pillike.FilterSmooth` |

(1) used for images of 64x64 px and more; PIL's own equalize leaves out the top value present instead.
(2) `pillike._create_affine_matrix` of 0.4.0: the shear factor is tanh, not tan, of the angle.

The affine ops go through PIL's `Image.transform` with its default nearest-neighbour resampling
(`pillike.warp_affine`), so they are nearest here too. Everything is drawn from torch's generator
(the global one unless a `torch.Generator` is passed), which datasets seed per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

MAX_MAGNITUDE = 30  # imgaug's RandAugment._M_MAX
CROP_REFERENCE_SIDE = 224  # the initial crop takes up to m pixels of a 224-px side
FILL = 128

OPS = (
    "identity", "autocontrast", "equalize", "invert", "rotate", "posterize", "solarize",
    "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
    "translate_y", "cutout", "blur", "smooth",
)  # fmt: skip


@dataclass(frozen=True)
class ImgaugStrengths:
    """What one magnitude m means to each op; signed ops use +-value."""

    max_crop_fraction: float  # the initial crop: up to this fraction of each side
    rotate_degrees: float
    shear_degrees: float  # the matrix uses tanh of this angle in radians, as imgaug 0.4.0 does
    translate_fraction: float
    enhance_delta: float  # colour / contrast / brightness / sharpness factor is 1 +- delta
    posterize_bits: int
    solarize_threshold: int  # values >= threshold are inverted; 256 inverts nothing
    cutout_fraction: float  # side of the cutout square, as a fraction of the image height


def imgaug_strengths(magnitude: int) -> ImgaugStrengths:
    """imgaug 0.4.0's op parameters for `RandAugment(m=magnitude)`, computed as it computes them."""

    def scaled(maximum: float) -> float:
        return magnitude * (maximum / MAX_MAGNITUDE)

    return ImgaugStrengths(
        max_crop_fraction=magnitude / CROP_REFERENCE_SIDE,
        rotate_degrees=scaled(30),
        shear_degrees=scaled(math.degrees(0.3)),
        translate_fraction=scaled(0.33),
        enhance_delta=min(scaled(0.9), 0.9),  # imgaug clips 1 +- delta to [0.1, 1.9]
        posterize_bits=8 - min(int(scaled(6)), 6),
        solarize_threshold=min(max(256 - int(scaled(256)), 0), 256),
        cutout_fraction=min(scaled(20 / 32), 20 / 32),
    )


def _box_sums(planes: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over every size x size window of int32 (N,H,W) -> (N,H-size+1,W-size+1), exact."""
    rows = torch.nn.functional.pad(planes.cumsum(1, dtype=torch.int32), (0, 0, 1, 0))
    rows = rows[:, size:] - rows[:, :-size]
    both = torch.nn.functional.pad(rows.cumsum(2, dtype=torch.int32), (1, 0))
    return both[:, :, size:] - both[:, :, :-size]


def pil_filter(video: torch.Tensor, name: str) -> torch.Tensor:
    """PIL's `ImageFilter.BLUR` (5x5 ring of ones / 16) or `SMOOTH` (3x3 ones, centre 5, / 13) on
    uint8 (...,C,H,W), as PIL applies them: sums rounded half up, a border of 2 (BLUR) or 1
    (SMOOTH) pixels left as it is. Integer window sums: a per-plane conv2d is ~10x slower on CPU."""
    height, width = video.shape[-2:]
    margin = 2 if name == "blur" else 1
    if height <= 2 * margin or width <= 2 * margin:
        return video
    planes = video.reshape(-1, height, width).int()
    if name == "blur":
        total, divisor = _box_sums(planes, 5) - _box_sums(planes, 3)[:, 1:-1, 1:-1], 16
    else:
        total, divisor = _box_sums(planes, 3) + 4 * planes[:, 1:-1, 1:-1], 13
    out = planes.clone()
    out[:, margin:-margin, margin:-margin] = (2 * total + divisor) // (2 * divisor)  # round half up
    return out.to(torch.uint8).reshape(video.shape)


def equalize_like_imgaug(video: torch.Tensor) -> torch.Tensor:
    """imgaug 0.4.0's own equalisation of uint8 (...,C,H,W), per frame and channel.

    It is PIL's algorithm except for the step: pixels below 255 // 255, where PIL leaves out the
    pixels of the highest value present (`pillike._equalize_no_pil_`, used for images of 64x64 px
    and more, so for every released SSv2 frame)."""
    *_, height, width = video.shape
    planes = video.reshape(-1, height * width).long()
    offsets = 256 * torch.arange(planes.shape[0])[:, None]
    histogram = torch.bincount((planes + offsets).flatten(), minlength=256 * planes.shape[0]).view(-1, 256)
    step = histogram[:, :-1].sum(1, keepdim=True) // 255
    below = torch.cat([torch.zeros_like(step), histogram.cumsum(1)[:, :-1]], dim=1)
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    keep = (step == 0) | ((histogram > 0).sum(1, keepdim=True) <= 1)
    lut = torch.where(keep, torch.arange(256).expand_as(lut), lut)
    return lut.to(torch.uint8).flatten()[planes + offsets].reshape(video.shape)


def _shear_angle(tanh_of: float) -> float:
    """torchvision's shear angle whose tangent is tanh(angle), imgaug 0.4.0's shear factor."""
    return math.degrees(math.atan(math.tanh(math.radians(tanh_of))))


class ImgaugRandAugment:
    """imgaug 0.4.0's `RandAugment(n=num_ops, m=magnitude)` with the same parameters on every frame.

    Call with uint8 (...,C,H,W) (a `tv_tensors.Video` stays one); the leading dims (frames) share
    every random draw. See the module docstring for the ops and where each number comes from."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, fill: int = FILL):
        if num_ops < 0 or magnitude < 0:
            raise ValueError(f"need num_ops >= 0 and magnitude >= 0, got {num_ops} and {magnitude}")
        self.num_ops = min(num_ops, len(OPS))
        self.magnitude = magnitude
        self.strengths = imgaug_strengths(magnitude)
        self.fill = fill

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = video.as_subclass(torch.Tensor)
        if x.dtype != torch.uint8:
            raise ValueError(f"imgaug's RandAugment works on uint8 pixels, got {x.dtype}")
        if _coin(generator):
            x = F.horizontal_flip(x)
        x = self._crop_jitter(x, generator)
        for index in torch.randperm(len(OPS), generator=generator)[: self.num_ops].tolist():
            x = self.apply(OPS[index], x, _coin(generator), generator)
        return tv_tensors.wrap(x, like=video) if isinstance(video, tv_tensors.TVTensor) else x

    def _crop_jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop round(side * U(0, m)/224) px off each side, resize back (bilinear, as cv2's linear)."""
        height, width = x.shape[-2:]
        fractions = torch.rand(4, generator=generator, dtype=torch.float64) * self.strengths.max_crop_fraction
        sides = (height, width, height, width)
        top, right, bottom, left = (round(side * float(f)) for side, f in zip(sides, fractions))
        if top + bottom >= height or left + right >= width or top == right == bottom == left == 0:
            return x
        return F.resized_crop(
            x, top, left, height - top - bottom, width - left - right, [height, width],
            interpolation=F.InterpolationMode.BILINEAR, antialias=False,
        )  # fmt: skip

    def apply(self, op: str, x: torch.Tensor, positive: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """One op at this magnitude on uint8 (...,C,H,W); `positive` picks the sign of signed ops."""
        strengths = self.strengths
        sign = 1.0 if positive else -1.0
        height, width = x.shape[-2:]
        factor = 1.0 + sign * strengths.enhance_delta
        nearest = F.InterpolationMode.NEAREST
        corner = [0.0, 0.0]  # imgaug shears about the top-left corner
        if op == "identity":
            return x
        if op == "autocontrast":
            return F.autocontrast(x)
        if op == "equalize":
            return equalize_like_imgaug(x)
        if op == "invert":
            return F.invert(x)
        if op == "rotate":
            return F.affine(x, angle=sign * strengths.rotate_degrees, translate=[0.0, 0.0], scale=1.0,
                            shear=[0.0, 0.0], interpolation=nearest, fill=self.fill)
        if op == "posterize":
            return F.posterize(x, strengths.posterize_bits)
        if op == "solarize":
            return x if strengths.solarize_threshold > 255 else F.solarize(x, strengths.solarize_threshold)
        if op == "color":
            return F.adjust_saturation(x, factor)
        if op == "contrast":
            return F.adjust_contrast(x, factor)
        if op == "brightness":
            return F.adjust_brightness(x, factor)
        if op == "sharpness":
            return F.adjust_sharpness(x, factor)
        if op == "shear_x":
            return F.affine(x, angle=0.0, translate=[0.0, 0.0], scale=1.0, center=corner, interpolation=nearest,
                            shear=[-_shear_angle(sign * strengths.shear_degrees), 0.0], fill=self.fill)
        if op == "shear_y":
            return F.affine(x, angle=0.0, translate=[0.0, 0.0], scale=1.0, center=corner, interpolation=nearest,
                            shear=[0.0, -_shear_angle(sign * strengths.shear_degrees)], fill=self.fill)
        if op == "translate_x":
            return F.affine(x, angle=0.0, translate=[sign * strengths.translate_fraction * width, 0.0], scale=1.0,
                            shear=[0.0, 0.0], interpolation=nearest, fill=self.fill)
        if op == "translate_y":
            return F.affine(x, angle=0.0, translate=[0.0, sign * strengths.translate_fraction * height], scale=1.0,
                            shear=[0.0, 0.0], interpolation=nearest, fill=self.fill)
        if op == "cutout":
            return self._cutout(x, generator)
        if op in ("blur", "smooth"):
            return pil_filter(x, op)
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")

    def _cutout(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A square of side cutout_fraction x height at a uniform centre, corners truncated as imgaug does."""
        height, width = x.shape[-2:]
        centre_x, centre_y = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        half = self.strengths.cutout_fraction * height / 2
        x1, x2 = (min(max(int(centre_x * width + offset), 0), width) for offset in (-half, half))
        y1, y2 = (min(max(int(centre_y * height + offset), 0), height) for offset in (-half, half))
        if x2 <= x1 or y2 <= y1:
            return x
        return F.erase(x, y1, x1, y2 - y1, x2 - x1, torch.tensor(self.fill, dtype=x.dtype))


def _coin(generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < 0.5)
