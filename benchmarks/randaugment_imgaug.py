"""bevt's `ImgaugRandAugment` against imgaug 0.4.0 itself, in two steps (imgaug needs NumPy < 1.24,
so it cannot share an environment with bevt):

    # 1. in a side environment: pip install imgaug==0.4.0 "numpy==1.23.5" "scipy<1.11" \
    #    "scikit-image<0.21" "opencv-python-headless<4.8" "Pillow<10" shapely imageio matplotlib
    python benchmarks/randaugment_imgaug.py dump imgaug_reference.npz
    # 2. in bevt's environment:
    python benchmarks/randaugment_imgaug.py compare imgaug_reference.npz

`dump` imports imgaug only and writes its op outputs (each of the 18 ops at m=7, both signs drawn
by seeds), its crop amounts, its op parameters for m = 0..40, and the mean |output - input| of the
whole RandAugment(n=4, m=7) over many seeds. `compare` runs bevt's version on the same images and
prints, per op, the share of pixels that differ and the largest difference (the better of the two
signs), and whether every parameter matches.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

OPS = ("identity", "autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "color", "contrast",
       "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y", "cutout", "blur", "smooth")
SEEDS = 6
WHOLE_RUNS = 1200


def test_images(size: int = 224) -> np.ndarray:
    """uint8 (2,size,size,3): smooth colour blobs, and 1/f colour noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = sum(rng.random(3) * np.exp(-((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2)[..., None] / 0.02)
                for _ in range(6))
    frequency = np.maximum(np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]), 1 / size)
    noise = np.stack([np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / frequency))
                      for _ in range(3)], -1)
    noise = (noise - noise.mean()) / (4 * noise.std()) + 0.5
    return (np.clip(np.stack([blobs / blobs.max(), noise]), 0, 1) * 255 + 0.5).astype(np.uint8)


def dump(path: str) -> None:
    import imgaug.augmenters as iaa
    import imgaug.parameters as iap
    import imgaug.random as iarandom

    images = test_images()
    out = {"images": images}
    for name, augmenter in zip(OPS, iaa.RandAugment._create_main_augmenters_list(iap.Deterministic(7), 128)):
        for seed in range(SEEDS):
            fixed = augmenter.to_deterministic()
            fixed.seed_(seed)
            out[f"op/{name}/{seed}"] = np.stack([fixed(image=image) for image in images])
    crop = iaa.RandAugment._create_initial_augmenters_list(iap.Deterministic(7))[1].children[0]
    drawn = crop._draw_samples(iarandom.RNG(0), [(224, 224, 3)] * 20000)
    out["crop_px"] = np.array([[s.crop_top, s.crop_right, s.crop_bottom, s.crop_left] for s in drawn])
    for m in range(41):
        ops = dict(zip(OPS, iaa.RandAugment._create_main_augmenters_list(iap.Deterministic(m), 128)))
        rng = iarandom.RNG(1)
        params = {"rotate": ops["rotate"].rotate, "shear": ops["shear_x"].shear[0],
                  "translate": ops["translate_x"].translate[0], "posterize": ops["posterize"].counts,
                  "solarize": ops["solarize"].threshold, "enhance": ops["color"].factor, "cutout": ops["cutout"].size}
        for key, param in params.items():
            out[f"m/{m}/{key}"] = np.unique(np.abs(param.draw_samples(200, random_state=rng)).astype(np.float64))
    out["whole"] = np.array([np.abs(iaa.RandAugment(n=4, m=7, seed=s)(image=images[1]).astype(int) - images[1]).mean()
                             for s in range(WHOLE_RUNS)])
    np.savez_compressed(path, **out)
    print(f"wrote {path}")


def compare(path: str) -> None:
    import torch

    from bevt.data.randaugment import ImgaugRandAugment, imgaug_strengths

    reference = np.load(path)
    images = reference["images"]
    frames = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    augment = ImgaugRandAugment(4, 7)
    print(f"{'op (m=7)':14s} {'pixels differing':>17s} {'max |d|':>8s}")
    for name in OPS:
        if name == "cutout":  # random position: compare the grey square's size instead
            sides = [(np.abs(reference[f"op/cutout/{s}"][1].astype(int) - images[1]).max(-1) > 0).sum() ** 0.5
                     for s in range(SEEDS)]
            print(f"{'cutout':14s} square side imgaug {np.median(sides):.1f} px, bevt "
                  f"{imgaug_strengths(7).cutout_fraction * 224:.1f} px")
            continue
        worst_share, worst_max = 0.0, 0
        for seed in range(SEEDS):
            expected = reference[f"op/{name}/{seed}"].astype(int)
            best = min(
                ((d > 0).mean(), d.max())
                for d in (np.abs(augment.apply(name, frames, positive).permute(0, 2, 3, 1).numpy() - expected)
                          for positive in (True, False))
            )
            worst_share, worst_max = max(worst_share, best[0]), max(worst_max, best[1])
        print(f"{name:14s} {worst_share:17.4%} {worst_max:8d}")
    mismatches = []
    for m in range(41):
        s = imgaug_strengths(m)
        ours = {"rotate": [s.rotate_degrees], "shear": [s.shear_degrees], "translate": [s.translate_fraction],
                "posterize": [s.posterize_bits], "solarize": [s.solarize_threshold], "cutout": [s.cutout_fraction],
                "enhance": sorted({1 - s.enhance_delta, 1 + s.enhance_delta})}
        mismatches += [(m, key) for key, value in ours.items()
                       if not np.allclose(reference[f"m/{m}/{key}"], value, atol=1e-6)]
    print(f"op parameters for m = 0..40: {'all equal' if not mismatches else f'differ at {mismatches}'}")
    drawn = torch.round(torch.rand(20000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
                        * imgaug_strengths(7).max_crop_fraction * 224).long()
    print("crop px per side, share of 0..7: imgaug", np.round(np.bincount(reference["crop_px"].ravel(), minlength=8)
                                                         / reference["crop_px"].size, 3))
    print("                                 bevt  ", np.round(np.bincount(drawn.numpy().ravel(), minlength=8)
                                                         / drawn.numel(), 3))
    ours = np.array([
        np.abs(augment(frames[1], torch.Generator().manual_seed(s)).permute(1, 2, 0).numpy().astype(int) - images[1]).mean()
        for s in range(WHOLE_RUNS)
    ])
    for name, values in (("imgaug", reference["whole"]), ("bevt", ours)):
        print(f"RandAugment(4, 7), mean |out - in| over {WHOLE_RUNS} draws: {name:6s} {values.mean():6.2f} "
              f"+- {values.std() / math.sqrt(len(values)):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["dump", "compare"])
    parser.add_argument("reference", help="the .npz that `dump` writes and `compare` reads")
    args = parser.parse_args()
    (dump if args.step == "dump" else compare)(args.reference)


if __name__ == "__main__":
    main()
