"""imgaug 0.4.0's RandAugment as the released SSv2 recipe runs it (bevt.data.randaugment).

imgaug no longer imports on NumPy >= 1.24, so it cannot be a test dependency. The expected op
parameters below were drawn from imgaug 0.4.0's own parameter objects
(`RandAugment._create_main_augmenters_list(m, 128)`, run under NumPy 1.23.5), and the ops imgaug
hands to PIL are compared with PIL itself, fed the affine matrices imgaug 0.4.0 builds
(`pillike._create_affine_matrix`)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision.transforms.v2 import functional as F

from bevt.data import randaugment
from bevt.data.randaugment import OPS, ImgaugRandAugment, equalize_like_imgaug, imgaug_strengths

# Drawn from imgaug 0.4.0: |rotate| deg, |shear| deg, |translate| fraction, enhance factors, cutout side.
IMGAUG_STRENGTHS = {
    0: (0.0, 0.0, 0.0, (1.0, 1.0), 0.0),
    7: (7.0, 4.0107047, 0.077, (0.79, 1.21), 0.14583334),
    15: (15.0, 8.59436721, 0.165, (0.55, 1.45), 0.3125),
    30: (30.0, 17.18873441, 0.33, (0.1, 1.9), 0.625),
    40: (40.0, 22.91831255, 0.44, (0.1, 1.9), 0.625),
}
# Drawn from imgaug 0.4.0 for m = 0..30 (m > 30 keeps the m = 30 values).
IMGAUG_POSTERIZE_BITS = [8] * 5 + [7] * 5 + [6] * 5 + [5] * 5 + [4] * 5 + [3] * 5 + [2]
IMGAUG_SOLARIZE_THRESHOLDS = [256, 248, 239, 231, 222, 214, 205, 197, 188, 180, 171, 163, 154, 146, 137, 128,
                              120, 111, 103, 94, 86, 77, 69, 60, 52, 43, 35, 26, 18, 9, 0]  # fmt: skip


@pytest.mark.parametrize("magnitude", sorted(IMGAUG_STRENGTHS))
def test_continuous_strengths_are_imgaug_0_4_0s(magnitude):
    rotate, shear, translate, factors, cutout = IMGAUG_STRENGTHS[magnitude]
    strengths = imgaug_strengths(magnitude)
    assert strengths.rotate_degrees == pytest.approx(rotate, abs=1e-6)
    assert strengths.shear_degrees == pytest.approx(shear, abs=1e-6)
    assert strengths.translate_fraction == pytest.approx(translate, abs=1e-9)
    enhance = (1 - strengths.enhance_delta, 1 + strengths.enhance_delta)
    assert enhance == pytest.approx(factors, abs=1e-6)
    assert strengths.cutout_fraction == pytest.approx(cutout, abs=1e-6)
    assert strengths.max_crop_fraction == magnitude / 224  # Crop(percent=U(0, m) / 224) per side


def test_discrete_strengths_are_imgaug_0_4_0s():
    for magnitude in range(41):
        strengths = imgaug_strengths(magnitude)
        assert strengths.posterize_bits == IMGAUG_POSTERIZE_BITS[min(magnitude, 30)], magnitude
        assert strengths.solarize_threshold == IMGAUG_SOLARIZE_THRESHOLDS[min(magnitude, 30)], magnitude


def natural_image(seed: int = 0, size: int = 64) -> np.ndarray:
    """uint8 (size,size,3): smooth colour fields plus fine noise, with both 0 and 255 present."""
    rng = np.random.default_rng(seed)
    layers = [
        np.asarray(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC))
        for side in (4, 16, size)
    ]
    pixels = 0.6 * layers[0] + 0.3 * layers[1] + 0.1 * layers[2]
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255
    return pixels.round().astype(np.uint8)


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def imgaug_pil_affine(image: np.ndarray, *, rotate=0.0, shear_x=0.0, shear_y=0.0, translate=(0.0, 0.0),
                      center=(0.0, 0.0)) -> np.ndarray:
    """What imgaug 0.4.0's `pillike.warp_affine` does: its forward matrix (centre, rotate by -angle,
    shear by tanh of the angle, translate, uncentre), inverted, through PIL's nearest transform."""
    height, width = image.shape[:2]
    cx, cy = width * center[0], height * center[1]
    r = -math.radians(rotate)

    def mat(rows):
        return np.array(rows, dtype=np.float32)

    steps = [
        mat([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]]),
        mat([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]]),
        mat([[1, math.tanh(math.radians(shear_x)), 0], [math.tanh(math.radians(shear_y)), 1, 0], [0, 0, 1]]),
        mat([[1, 0, translate[0]], [0, 1, translate[1]], [0, 0, 1]]),
        mat([[1, 0, cx], [0, 1, cy], [0, 0, 1]]),
    ]
    forward = np.eye(3, dtype=np.float32)
    for step in steps:
        forward = step @ forward
    inverse = np.linalg.inv(forward)
    pil = Image.fromarray(image)
    return np.asarray(pil.transform(pil.size, Image.AFFINE, tuple(inverse[:2].flat), fillcolor=(128, 128, 128)))


@pytest.mark.parametrize("positive", [True, False])
def test_geometric_ops_are_imgaugs_pil_affine(positive):
    image = natural_image(size=96)
    augment = ImgaugRandAugment(4, 7)
    s = imgaug_strengths(7)
    sign = 1 if positive else -1
    references = {
        "rotate": imgaug_pil_affine(image, rotate=sign * s.rotate_degrees, center=(0.5, 0.5)),
        "shear_x": imgaug_pil_affine(image, shear_x=sign * s.shear_degrees),
        "shear_y": imgaug_pil_affine(image, shear_y=sign * s.shear_degrees),
        "translate_x": imgaug_pil_affine(image, translate=(sign * s.translate_fraction * 96, 0)),
        "translate_y": imgaug_pil_affine(image, translate=(0, sign * s.translate_fraction * 96)),
    }
    for op, expected in references.items():
        out = hwc(augment.apply(op, chw(image), positive))
        differ = (out != expected).any(-1).mean()
        assert differ < 0.005, (op, differ)  # nearest-neighbour ties may pick the other neighbour
        assert (out == 128).all(-1).any() and not (image == 128).all(-1).any(), op  # fill 128 in all channels


def test_pixel_ops_are_pils():
    image = natural_image()
    pil = Image.fromarray(image)
    augment = ImgaugRandAugment(4, 7)
    exact = {
        ("invert", True): ImageOps.invert(pil),
        ("posterize", True): ImageOps.posterize(pil, 7),
        ("solarize", True): ImageOps.solarize(pil, 197),
        ("brightness", True): ImageEnhance.Brightness(pil).enhance(1.21),
        ("brightness", False): ImageEnhance.Brightness(pil).enhance(0.79),
        ("sharpness", True): ImageEnhance.Sharpness(pil).enhance(1.21),
        ("sharpness", False): ImageEnhance.Sharpness(pil).enhance(0.79),
        ("blur", True): pil.filter(ImageFilter.BLUR),
        ("smooth", True): pil.filter(ImageFilter.SMOOTH),
        ("equalize", True): ImageOps.equalize(pil),  # same as PIL while 255 is present
    }
    for (op, positive), expected in exact.items():
        np.testing.assert_array_equal(hwc(augment.apply(op, chw(image), positive)), np.asarray(expected), err_msg=op)
    within_one = {  # PIL's integer grey conversion and rounding against torchvision's float ones
        ("color", True): ImageEnhance.Color(pil).enhance(1.21),
        ("color", False): ImageEnhance.Color(pil).enhance(0.79),
        ("contrast", True): ImageEnhance.Contrast(pil).enhance(1.21),
        ("contrast", False): ImageEnhance.Contrast(pil).enhance(0.79),
        ("autocontrast", True): ImageOps.autocontrast(Image.fromarray((image * 0.5 + 40).astype(np.uint8))),
    }
    for (op, positive), expected in within_one.items():
        source = image if op != "autocontrast" else (image * 0.5 + 40).astype(np.uint8)
        out = hwc(augment.apply(op, chw(source), positive)).astype(int)
        assert np.abs(out - np.asarray(expected, dtype=int)).max() <= 1, op
    np.testing.assert_array_equal(hwc(augment.apply("identity", chw(image), True)), image)


def test_equalize_uses_imgaugs_step_not_pils():
    """imgaug's step is (pixels below 255) // 255; PIL leaves out the top value present instead."""
    image = np.minimum(natural_image(1), 180)  # a crowded top value below 255: the two steps differ
    planes = image.transpose(2, 0, 1).reshape(3, -1)
    expected = np.empty_like(planes)
    for c, plane in enumerate(planes):
        histogram = np.bincount(plane, minlength=256)
        step = histogram[:255].sum() // 255
        lut = np.minimum((step // 2 + np.concatenate([[0], np.cumsum(histogram)[:-1]])) // step, 255)
        expected[c] = lut[plane]
    out = ImgaugRandAugment(4, 7).apply("equalize", chw(image), True).reshape(3, -1).numpy()
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, np.asarray(ImageOps.equalize(Image.fromarray(image))).transpose(2, 0, 1).reshape(3, -1))
    flat = np.full((8, 8, 3), 77, np.uint8)  # a single value: left as it is
    np.testing.assert_array_equal(hwc(equalize_like_imgaug(chw(flat))), flat)


def test_cutout_is_one_grey_square_of_the_imgaug_side():
    image = natural_image(size=224)
    augment = ImgaugRandAugment(4, 7)
    side = imgaug_strengths(7).cutout_fraction * 224  # 32.7 px
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = hwc(augment.apply("cutout", chw(image), True, generator))
        box = (out != image).any(-1)
        rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
        assert (out[box] == 128).all()
        inside = rows.min() > 0 and rows.max() < 223 and cols.min() > 0 and cols.max() < 223
        if inside:  # away from the borders the square is whole: 32 or 33 px a side
            assert rows.max() - rows.min() + 1 in (math.floor(side), math.ceil(side))
            assert cols.max() - cols.min() + 1 in (math.floor(side), math.ceil(side))


def still_clip(frames: int = 4, size: int = 48) -> torch.Tensor:
    return chw(natural_image(size=size))[None].repeat(frames, 1, 1, 1)


@pytest.mark.parametrize("seed", range(6))
def test_every_frame_gets_the_same_flip_crop_and_ops(seed):
    clip = still_clip()
    out = ImgaugRandAugment(4, 7)(clip, torch.Generator().manual_seed(seed))
    assert out.shape == clip.shape and out.dtype == torch.uint8
    for frame in out[1:]:
        assert torch.equal(frame, out[0])


def test_the_passed_generator_drives_every_draw():
    clip = still_clip()
    augment = ImgaugRandAugment(4, 7)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = augment(clip, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not touched
    torch.manual_seed(2)
    assert torch.equal(augment(clip, torch.Generator().manual_seed(5)), first)


def test_flip_always_runs_then_n_distinct_ops(monkeypatch):
    applied = []
    monkeypatch.setattr(ImgaugRandAugment, "apply", lambda self, op, x, positive, generator=None: applied.append(op) or x)
    image = chw(natural_image(size=32))
    augment = ImgaugRandAugment(4, 0)  # m = 0: no crop, so the output is the image or its mirror
    generator = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(400):
        out = augment(image, generator)
        flips += torch.equal(out, F.horizontal_flip(image))
        assert torch.equal(out, image) or torch.equal(out, F.horizontal_flip(image))
    assert 0.42 < flips / 400 < 0.58
    calls = [applied[i : i + 4] for i in range(0, len(applied), 4)]
    assert len(calls) == 400 and all(len(set(call)) == 4 for call in calls)
    counts = np.array([applied.count(op) for op in OPS])
    assert counts.min() > 0.6 * 1600 / 18 and counts.max() < 1.4 * 1600 / 18  # uniform over the 18 ops


def test_crop_takes_up_to_m_pixels_of_224_per_side(monkeypatch):
    crops = []

    def spy(x, top, left, height, width, size, **kwargs):
        crops.append((top, left, height, width))
        return x

    monkeypatch.setattr(randaugment.F, "resized_crop", spy)
    monkeypatch.setattr(ImgaugRandAugment, "apply", lambda self, op, x, positive, generator=None: x)
    image = torch.zeros(3, 224, 224, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        ImgaugRandAugment(4, 7)(image, generator)
    tops, lefts, heights, widths = np.array(crops).T
    bottoms, rights = 224 - tops - heights, 224 - lefts - widths
    for side in (tops, lefts, bottoms, rights):
        assert side.min() == 0 and side.max() == 7 and set(side.tolist()) == set(range(8))
        assert 3.0 < side.mean() < 4.0  # round(U(0, 7)): 0 and 7 half as likely as the others
    assert len(crops) > 290  # only a draw of four zero crops skips the resize
