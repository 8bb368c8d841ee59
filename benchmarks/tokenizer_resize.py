"""How much the tokenizer view's resize changes DALL-E targets: OpenCV INTER_LANCZOS4 (the released
pipeline, `data.tokenizer_resize=official`) against PIL's antialiased Lanczos (`pil`), side by side.

Every 224x224 crop is halved both ways (`bevt.data.transforms.tokenizer_view`) and tokenized by one
DALL-E encoder; the script prints the pixel difference of the two views and the share of the
14x14 tokens that differ. No released dVAE weights are needed, and none are used: the encoder has
RANDOM weights (the `dall_e` package's initialisation when it is installed, else PyTorch's), so
the token numbers show how sensitive an untrained dVAE of the released architecture is, not the
released one. As a yardstick it also prints the tokens that change when the PIL view moves by one
grey level (+-1/255 noise).

Images: frames of the synthetic benchmark (`bevt synth` renders them with
`bevt.data.synthetic.render_image`; smooth backgrounds and one textured object), natural-ish
images (1/f colour noise, whose power spectrum falls like that of photographs), and any photos
given with --photos (short side scaled to 256 as in pretraining, then 5 crops: corners and centre).

    python benchmarks/tokenizer_resize.py --images 16 --photos a.jpg b.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from PIL import Image

from bevt.data.synthetic import render_image
from bevt.data.transforms import tokenizer_view
from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer, convert_official_state_dict


def pink_noise_images(count: int, size: int, seed: int) -> np.ndarray:
    """uint8 (count,size,size,3): amplitude ~ 1/f per channel, channels partly correlated."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fx, fy), 1 / size)
    images = []
    for _ in range(count):
        shared = rng.standard_normal((size, size))
        channels = []
        for _ in range(3):
            white = 0.7 * shared + 0.3 * rng.standard_normal((size, size))
            channels.append(np.real(np.fft.ifft2(np.fft.fft2(white) * amplitude)))
        image = np.stack(channels, -1)
        image = (image - image.mean()) / (image.std() * 4) + 0.5  # +-2 std spans [0, 1]
        images.append(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.stack(images)


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render_image(rng, size, label % 10) for label in range(count)])


def photo_crops(paths: list[str], size: int) -> np.ndarray:
    """uint8 (5 x len(paths), size, size, 3): each photo with its short side at 256/224 x size
    (bicubic), cut into its four corner crops and its centre crop."""
    crops = []
    for path in paths:
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
            scale = round(size * 256 / 224) / min(photo.size)
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        pixels = np.asarray(photo)
        height, width = pixels.shape[:2]
        for top, left in [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
                          ((height - size) // 2, (width - size) // 2)]:
            crops.append(pixels[top : top + size, left : left + size])
    return np.stack(crops)


def random_dalle_tokenizer(seed: int) -> tuple[DalleTokenizer, str]:
    torch.manual_seed(seed)
    try:
        from dall_e import Encoder
    except ImportError:
        return DalleTokenizer(DalleEncoder(), channels_last=False), "random weights, PyTorch's default init"
    encoder = DalleEncoder()
    encoder.load_state_dict(convert_official_state_dict(Encoder(n_hid=256, vocab_size=8192, device="cpu").state_dict()))
    return DalleTokenizer(encoder, channels_last=False), "random weights, the dall_e package's init"


def compare(name: str, images: np.ndarray, tokenizer: DalleTokenizer, seed: int) -> None:
    clip = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N,3,224,224) uint8, one "clip"
    half = images.shape[1] // 2
    views = {mode: tokenizer_view(clip, half, mode).transpose(0, 1) for mode in ("pil", "official")}  # (N,3,h,w)
    generator = torch.Generator().manual_seed(seed)
    nudged = (views["pil"] + torch.randint(-1, 2, views["pil"].shape, generator=generator) / 255).clamp(0, 1)
    tokens = {key: tokenizer.encode(view) for key, view in {**views, "nudged": nudged}.items()}
    difference = (views["official"] - views["pil"]).abs() * 255
    changed = (tokens["official"] != tokens["pil"]).float().mean().item()
    yardstick = (tokens["nudged"] != tokens["pil"]).float().mean().item()
    print(f"{name:28s} {len(images):6d} {difference.mean():9.2f} {difference.quantile(0.99):8.1f} "
          f"{difference.max():8.1f} {changed:14.1%} {yardstick:14.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images of each kind")
    parser.add_argument("--size", type=int, default=224, help="crop side; the tokenizer view is half of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", nargs="*", default=[], help="photo files to measure as well")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer, weights = random_dalle_tokenizer(args.seed)
    print(f"DALL-E encoder with {weights} (no released dVAE), fp32, {args.size}px crops -> {args.size // 2}px views")
    print(f"{'images':28s} {'count':>6s} {'mean|d|':>9s} {'p99|d|':>8s} {'max|d|':>8s} "
          f"{'tokens changed':>14s} {'+-1/255 noise':>14s}")
    print(f"{'':28s} {'':6s} {'(pixel difference official - pil, /255)':>27s}")
    compare("synthetic benchmark frames", synthetic_images(args.images, args.size, args.seed), tokenizer, args.seed)
    compare("1/f noise (natural-ish)", pink_noise_images(args.images, args.size, args.seed), tokenizer, args.seed)
    if args.photos:
        compare(f"photos ({len(args.photos)} x 5 crops)", photo_crops(args.photos, args.size), tokenizer, args.seed)


if __name__ == "__main__":
    main()
