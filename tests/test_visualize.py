import numpy as np
import pytest
import torch
from PIL import Image

from bevt.cli import main
from bevt.config import load_config
from bevt.masking import build_mask_generator
from bevt.tokenizers.dalle import DalleDecoder, DalleEncoder, DalleTokenizer
from bevt.checkpoint import save_checkpoint
from bevt.models.build import build_model
from bevt.eval.visualize import make_reconstruction_figure

VOCAB = 32


@pytest.fixture
def tokenizer_dir(tmp_path):
    torch.manual_seed(0)
    decoder = DalleDecoder(hidden=16, init_channels=8, blocks_per_group=1, vocab_size=VOCAB)
    DalleTokenizer(DalleEncoder(hidden=16, blocks_per_group=1, vocab_size=VOCAB), decoder).save(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.fixture
def checkpoint(tmp_path, tokenizer_dir):
    config = load_config("tiny_joint", [f"tokenizer.path={tokenizer_dir}", "data.images=i", "data.train=t"])
    model = build_model(config)
    return save_checkpoint(tmp_path / "run", 1, config, model.state_dict(), {"step": 1})


def _png_size(path):
    with Image.open(path) as image:
        return image.size


def test_figure_for_a_clip_and_an_image(tmp_path, checkpoint):
    from bevt.models.build import load_model_from_checkpoint

    pretrainer, _ = load_model_from_checkpoint(checkpoint)
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 8, 64, 64, generator=g)
    mask = build_mask_generator("tube", (4, 4, 4), min_cells=4)(g)
    result = make_reconstruction_figure(pretrainer, pretrainer.tokenizer, clip, mask, tmp_path / "clip.png")
    assert 0 <= result["masked_accuracy"] <= 1
    width, height = _png_size(tmp_path / "clip.png")
    assert width > height > 300  # 8 frame columns, 5 rows

    image_mask = build_mask_generator("blockwise", (4, 4), min_cells=4)(g)
    make_reconstruction_figure(None, pretrainer.tokenizer, clip[:, 0], image_mask, tmp_path / "image.png")
    assert _png_size(tmp_path / "image.png")[0] > 200
    with pytest.raises(ValueError, match="does not fit"):
        make_reconstruction_figure(None, pretrainer.tokenizer, clip, image_mask, tmp_path / "bad.png")


def test_visualize_cli(tmp_path, checkpoint, tokenizer_dir, capsys):
    from bevt.data.synthetic import render_spatial_clip, write_h264

    video = tmp_path / "clip.mp4"
    write_h264(str(video), render_spatial_clip(np.random.default_rng(0), 64, 16, 0))
    assert main(["visualize", str(video), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "v.png")]) == 0
    assert "masked-token accuracy" in capsys.readouterr().out and (tmp_path / "v.png").is_file()

    image = tmp_path / "image.png"
    Image.fromarray(np.full((48, 80, 3), 120, dtype=np.uint8)).save(image)
    assert main(["visualize", str(image), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "i.png")]) == 0
    assert main(["visualize", str(image), "--out", str(tmp_path / "x.png")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_the_tokenizer_view_is_resized_as_the_run_trained(tmp_path, tokenizer_dir, monkeypatch):
    """The figure's true tokens are the run's targets only if its half-size view is made the same
    way (`data.tokenizer_resize`: PIL's or OpenCV's Lanczos)."""
    import bevt.eval.visualize as visualize

    config = load_config("tiny_joint", [f"tokenizer.path={tokenizer_dir}", "data.images=i", "data.train=t",
                                        "data.tokenizer_resize=official"])
    run = save_checkpoint(tmp_path / "run", 1, config, build_model(config).state_dict(), {"step": 1})
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    resizes = []
    original = visualize.tokenizer_view
    monkeypatch.setattr(visualize, "tokenizer_view", lambda *args: resizes.append(args[2]) or original(*args))
    visualize.visualize_file(image, tmp_path / "v.png", checkpoint=run)
    assert resizes == ["official"]
