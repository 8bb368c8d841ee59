import random

import numpy as np
import pytest
import torch

from bevt.config import load_config
from bevt.train.main import train_tokenizer


@pytest.fixture(autouse=True)
def seed_every_test():
    """Every test starts from the same global RNG states, whatever ran before it (model inits,
    dropout and timm's Mixup draw from them); tests that need other draws seed their own."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny_tokenizer(images, out, size: int = 32, steps_per_epoch_batch: int = 8, epochs: float = 1.0,
                         width: int = 8, codebook_size: int = 32, overrides=()):
    """A VQ tokenizer for `size`-px model inputs (it sees size/2), trained briefly by the one loop."""
    cfg = load_config("tokenizer_vq", [
        f"data.images={images}", f"run.out={out}", f"data.size={size}", f"data.short_side=[{size},{size + size // 4}]",
        f"vq.width={width}", f"vq.codebook_size={codebook_size}", "vq.code_dim=8",
        f"data.image_batch_size={steps_per_epoch_batch}", f"optim.epochs={epochs}", "data.workers=0",
        "run.device=cpu", "run.log_every=1", *overrides,
    ])
    return train_tokenizer(cfg)
