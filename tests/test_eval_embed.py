"""`bevt embed` and `bevt evaluate --linear-probe` on the tiny benchmark: shapes, labels, paths,
views averaged, an image-stream checkpoint inflated, a finetuned checkpoint's encoder."""

import json

import pytest
import torch

from bevt.cli import main
from bevt.data.datasets import load_annotations
from bevt.data.synthetic import make_synthetic_benchmark
from bevt.eval.embed import load_encoder, load_features
from bevt.models.convert import inflate_patch_embed
from conftest import train_tiny_tokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_torch_thread):
    """The benchmark at 64 px with 8 frames, a stage-1 run and a finetuning run of a few steps."""
    root = tmp_path_factory.mktemp("embed")
    paths = make_synthetic_benchmark(str(root / "bench"), size=64, frames=8, images_per_class=2,
                                     val_images_per_class=1, videos_per_class=1, val_videos_per_class=1)
    train_tiny_tokenizer(paths["images_train"], root / "tokenizer", size=64, epochs=0.5)
    stage1, finetuned = root / "stage1", root / "finetuned"
    assert main(["pretrain", "--config", "tiny_image", f"tokenizer.path={root / 'tokenizer'}",
                 f"data.images={paths['images_train']}", f"run.out={stage1}", "optim.epochs=1", "data.frames=8",
                 "data.interval=1", "eval.batch_size=4",
                 "optim.warmup_epochs=0"]) == 0
    assert main(["finetune", "--config", "tiny_finetune", f"data.train={paths['temporal_train']}",
                 f"data.val={paths['temporal_val']}", f"data.labels={paths['temporal_classes']}",
                 f"run.out={finetuned}", f"run.init_from={stage1}", "optim.epochs=0.5",
                 "optim.warmup_epochs=0"]) == 0
    return paths, stage1, finetuned


def test_embed_writes_one_feature_per_clip_with_labels_and_paths(runs, tmp_path, capsys):
    paths, stage1, finetuned = runs
    samples = load_annotations(paths["temporal_val"]).samples
    for checkpoint in (stage1, finetuned):
        out = tmp_path / f"{checkpoint.name}.safetensors"
        assert main(["embed", paths["temporal_val"], "--checkpoint", str(checkpoint), "--out", str(out),
                     "--device", "cpu"]) == 0
        saved = load_features(out)
        encoder, _ = load_encoder(checkpoint)
        assert saved["features"].shape == (len(samples), encoder.num_features)
        assert saved["features"].dtype == torch.float32 and torch.isfinite(saved["features"]).all()
        assert saved["labels"].tolist() == [s.label for s in samples]
        assert saved["paths"] == [s.path for s in samples]
        assert saved["mode"] == "normal" and "clips x" in saved["views"]
    assert "6 clips x" in capsys.readouterr().out

    # single files too (no labels), and the features do not depend on the batch size
    one = tmp_path / "one.safetensors"
    assert main(["embed", samples[0].path, samples[1].path, "--checkpoint", str(finetuned), "--out", str(one),
                 "--batch-size", "1", "--device", "cpu"]) == 0
    single = load_features(one)
    assert single["labels"].tolist() == [-1, -1]
    torch.testing.assert_close(single["features"], saved["features"][:2], rtol=1e-4, atol=1e-5)

    # a bad output name is one line, not a traceback
    assert main(["embed", samples[0].path, "--checkpoint", str(finetuned), "--out", str(tmp_path / "x.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_image_stream_checkpoint_embeds_with_its_inflated_patch_embedding(runs):
    _, stage1, _ = runs
    encoder, cfg = load_encoder(stage1)
    assert cfg.pretrain.streams == "image"
    assert torch.equal(encoder.patch_embed.proj.weight, inflate_patch_embed(encoder.patch_embed_2d.proj.weight))


def test_evaluate_linear_probe_with_the_temporal_test(runs, tmp_path, capsys):
    paths, stage1, _ = runs
    assert main(["evaluate", "--linear-probe", "--config", "tiny_finetune", f"data.train={paths['temporal_train']}",
                 f"data.val={paths['temporal_val']}", f"data.labels={paths['temporal_classes']}",
                 "--checkpoint", str(stage1), "--temporal-test", "--out", str(tmp_path / "probe")]) == 0
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert set(results["results"]) == {"normal", "single_frame", "shuffled"}
    assert results["videos"] == 6 and results["train_videos"] == 6
    assert results["train_top1"] == 100.0  # 6 clips of 6 classes in 48+ dimensions: separable
    assert "| Random-shuffling |" in capsys.readouterr().out
