import pytest
import torch
from torch.distributed.utils import _to_kwargs

from bevt.masking import build_mask_generator
from bevt.models import create_model
from bevt.models.decoders import ImageDecoder, TokenUpsample2d, TokenUpsample3d, VideoDecoder
from bevt.models.pretrainer import NOT_A_TARGET, BEVTPretrainer, HostMask
from bevt.tokenizers.dalle import DalleEncoder, DalleTokenizer

VOCAB = 64


def _tiny_tokenizer(vocab_size=VOCAB):
    torch.manual_seed(0)
    return DalleTokenizer(DalleEncoder(hidden=16, blocks_per_group=1, vocab_size=vocab_size))


def _batches(size=32, frames=4, seed=0):
    """2 images + 2 clips of the debug size with blockwise / tube masks on the H/16 grid."""
    g = torch.Generator().manual_seed(seed)
    cells = size // 16
    image_masks = build_mask_generator("blockwise", (cells, cells), min_cells=1)
    video_masks = build_mask_generator("tube", (frames // 2, cells, cells), min_cells=1)
    image_batch = {
        "image": torch.randn(2, 3, size, size, generator=g),
        "image_tok": torch.rand(2, 3, size // 2, size // 2, generator=g),
        "mask": torch.stack([image_masks(g) for _ in range(2)]),
    }
    video_batch = {
        "video": torch.randn(2, 3, frames, size, size, generator=g),
        "video_tok": torch.rand(2, 3, frames, size // 2, size // 2, generator=g),
        "mask": torch.stack([video_masks(g) for _ in range(2)]),
    }
    return image_batch, video_batch


def _pretrainer(streams="joint", **kwargs):
    torch.manual_seed(0)
    return BEVTPretrainer(create_model("debug"), _tiny_tokenizer(), streams=streams, **kwargs)


def test_swin_b_decoder_and_classifier_sizes():
    num_features = 8 * 128  # Swin-B: C = 128
    decoders = [ImageDecoder(num_features), VideoDecoder(num_features)]
    assert sum(p.numel() for d in decoders for p in d.parameters()) == 13_636_608  # 13.6 M
    with torch.device("meta"):
        pretrainer = BEVTPretrainer(create_model("swin_b"), DalleTokenizer(DalleEncoder(16, 1, 8192)))
    decoder_params = sum(p.numel() for m in (pretrainer.image_decoder, pretrainer.video_decoder) for p in m.parameters())
    assert decoder_params == 13_636_608
    assert sum(p.numel() for p in pretrainer.token_head.parameters()) == 8_396_800  # 8.4 M


@pytest.mark.parametrize("kernel", [(2, 2), (1, 2, 2), (2, 1, 1), (2, 3, 1)])
def test_token_upsample_is_the_transposed_conv_on_channels_last_features(kernel):
    """The decoders' matmul upsampling against torch's transposed conv with the same weights, in
    float64, forward and every gradient (a wrong interleave of space and kernel axes fails)."""
    torch.manual_seed(0)
    dims = len(kernel)
    cls, reference = (TokenUpsample2d, torch.nn.functional.conv_transpose2d) if dims == 2 else (
        TokenUpsample3d, torch.nn.functional.conv_transpose3d)
    upsample = cls(6, 5, kernel_size=kernel, stride=kernel).double()
    x = torch.randn(2, *(3, 4, 2)[:dims], 6, dtype=torch.float64, requires_grad=True)
    y = upsample(x)
    expected = reference(x.movedim(-1, 1), upsample.weight, upsample.bias, stride=kernel).movedim(1, -1)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(y)
    ours = torch.autograd.grad((y * probe).sum(), (x, upsample.weight, upsample.bias))
    theirs = torch.autograd.grad((expected * probe).sum(), (x, upsample.weight, upsample.bias))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_full_size_logit_shapes_on_meta():
    with torch.device("meta"):
        pretrainer = BEVTPretrainer(create_model("swin_b"), DalleTokenizer(DalleEncoder(16, 1, 8192)))
        image = pretrainer.decode_features(torch.empty(1, 3, 224, 224), torch.zeros(1, 14, 14, dtype=torch.bool))
        video = pretrainer.decode_features(torch.empty(1, 3, 16, 224, 224), torch.zeros(1, 8, 14, 14, dtype=torch.bool))
        assert pretrainer.token_logits(image).shape == (1, 14, 14, 8192)
        assert pretrainer.token_logits(video).shape == (1, 16, 14, 14, 8192)


def test_joint_forward_outputs_and_shapes():
    pretrainer = _pretrainer(video_loss_weight=0.5)
    image_batch, video_batch = _batches()
    torch.manual_seed(1)
    out = pretrainer(image_batch, video_batch)
    assert set(out) == {"loss", "loss_image", "loss_video", "acc_image", "acc_video"}
    assert torch.allclose(out["loss"], out["loss_image"] + 0.5 * out["loss_video"])
    # targets computed by the caller (the loop times the tokenizer apart) give the same loss
    targets = {"image": pretrainer.target_tokens(image_batch["image_tok"]),
               "video": pretrainer.target_tokens(video_batch["video_tok"])}
    torch.manual_seed(1)
    assert torch.equal(pretrainer(image_batch, video_batch, targets=targets)["loss"], out["loss"])
    torch.manual_seed(1)
    shifted = {name: (tokens + 1) % pretrainer.tokenizer.vocab_size for name, tokens in targets.items()}
    assert not torch.equal(pretrainer(image_batch, video_batch, targets=shifted)["loss"], out["loss"])
    assert pretrainer.predict_tokens(image_batch["image"], image_batch["mask"]).shape == (2, 2, 2)
    assert pretrainer.predict_tokens(video_batch["video"], video_batch["mask"]).shape == (2, 4, 2, 2)
    assert pretrainer.target_tokens(video_batch["video_tok"]).shape == (2, 4, 2, 2)
    out["loss"].backward()
    assert pretrainer.token_head.weight.grad is not None


def test_only_frames_with_masked_cells_are_tokenized_and_the_loss_is_unchanged():
    pretrainer = _pretrainer()
    image_batch, video_batch = _batches(frames=8)
    video_batch["mask"][0, 1:3] = False  # clip 0: steps 1 and 2 (frames 2-5) hold no masked cell
    video_batch["mask"][1] = True
    image_batch["mask"][1] = False  # an image without masked cells (its loss is empty)
    seen = []
    hook = pretrainer.tokenizer.encoder.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    full = {name: pretrainer.target_tokens(b[f"{name}_tok"]) for name, b in (("image", image_batch), ("video", video_batch))}
    partial = {name: pretrainer.target_tokens(b[f"{name}_tok"], b["mask"])
               for name, b in (("image", image_batch), ("video", video_batch))}
    seen.append("streams")
    together = pretrainer.target_tokens_streams([(image_batch["image_tok"], image_batch["mask"]),
                                                 (video_batch["video_tok"], video_batch["mask"])])
    hook.remove()
    assert seen == [2, 16, 1, 12, "streams", 13]  # both streams' frames in one call
    assert torch.equal(together[0], partial["image"]) and torch.equal(together[1], partial["video"])
    assert torch.equal(partial["video"][0, 2:6], torch.full_like(partial["video"][0, 2:6], NOT_A_TARGET))
    assert torch.equal(partial["video"][1], full["video"][1]) and torch.equal(partial["image"][0], full["image"][0])
    torch.manual_seed(1)
    reference = pretrainer(image_batch, video_batch, targets=full)
    torch.manual_seed(1)
    assert torch.equal(pretrainer(image_batch, video_batch, targets=partial)["loss"], reference["loss"])
    torch.manual_seed(1)
    assert torch.equal(pretrainer(image_batch, video_batch)["loss"], reference["loss"])  # tokenized inside
    with pytest.raises(ValueError, match="does not match the token grid"):
        pretrainer.target_tokens(video_batch["video_tok"], video_batch["mask"][:, :2])


def test_the_host_mask_stays_on_the_host_when_ddp_moves_the_inputs():
    """DDP and FSDP move every tensor of a forward's inputs to the device (here "meta", so the
    test runs on a CPU); the host mask must stay, or picking the masked cells waits for a GPU."""
    _, video_batch = _batches(frames=8)
    batch = {**video_batch, "host_mask": HostMask(video_batch["mask"])}
    _, (moved,) = _to_kwargs((), {"video_batch": batch}, torch.device("meta"), False)  # as model(**inputs)
    assert moved["video_batch"]["video"].device.type == "meta"
    assert moved["video_batch"]["host_mask"].mask.device.type == "cpu"
    # and the loss picks the same cells from it as from the device mask
    pretrainer = _pretrainer()
    torch.manual_seed(1)
    reference = pretrainer(None, video_batch)["loss"]
    torch.manual_seed(1)
    assert torch.equal(pretrainer(None, batch)["loss"], reference)


def test_tokenizer_is_frozen_and_outside_the_state_dict():
    pretrainer = _pretrainer()
    assert not any(key.startswith("tokenizer") for key in pretrainer.state_dict())
    tokenizer_params = {id(p) for p in pretrainer.tokenizer.parameters()}
    assert not tokenizer_params & {id(p) for p in pretrainer.parameters()}
    assert not any(p.requires_grad for p in pretrainer.tokenizer.parameters())
    # a checkpoint round trip needs only the trainable weights
    fresh = BEVTPretrainer(create_model("debug"), _tiny_tokenizer())
    fresh.load_state_dict(pretrainer.state_dict())


def test_single_streams():
    image_batch, video_batch = _batches()
    image_only = _pretrainer("image")
    assert image_only.video_decoder is None
    assert set(image_only(image_batch=image_batch)) == {"loss", "loss_image", "acc_image"}
    with pytest.raises(ValueError, match="streams='image'"):
        image_only(video_batch=video_batch)
    video_only = _pretrainer("video")
    assert video_only.image_decoder is None
    assert set(video_only(video_batch=video_batch)) == {"loss", "loss_video", "acc_video"}
    with pytest.raises(ValueError, match="streams"):
        _pretrainer("both")
    with pytest.raises(ValueError, match="needs an image_batch"):
        video_only()


def test_mask_must_match_the_token_grid():
    image_batch, _ = _batches()
    image_batch["mask"] = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not match the token grid"):
        _pretrainer("image")(image_batch=image_batch)


@pytest.mark.parametrize("stream", ["image", "video"])
def test_loss_depends_only_on_masked_positions(stream):
    pretrainer = _pretrainer().eval()
    image_batch, video_batch = _batches()
    batch = image_batch if stream == "image" else video_batch
    mask = batch["mask"] if stream == "image" else batch["mask"].repeat_interleave(2, dim=1)  # per-frame cells

    def perturb(where):
        def hook(module, inputs, features):  # decoder output (B,[T],h,w,8C): what the logits are made of
            noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
            return features + 10 * noise * where.unsqueeze(-1)

        return hook

    decoder = pretrainer.image_decoder if stream == "image" else pretrainer.video_decoder
    kwargs = {f"{stream}_batch": batch}
    with torch.no_grad():
        reference = pretrainer(**kwargs)[f"loss_{stream}"]
        handle = decoder.register_forward_hook(perturb(~mask))
        unmasked_perturbed = pretrainer(**kwargs)[f"loss_{stream}"]
        handle.remove()
        handle = decoder.register_forward_hook(perturb(mask))
        masked_perturbed = pretrainer(**kwargs)[f"loss_{stream}"]
        handle.remove()
    assert torch.equal(unmasked_perturbed, reference)
    assert not torch.allclose(masked_perturbed, reference)


def test_tiny_joint_model_overfits_one_batch():
    pretrainer = _pretrainer()
    image_batch, video_batch = _batches()
    optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=1e-3)
    first = None
    for step in range(100):
        loss = pretrainer(image_batch, video_batch)["loss"]
        first = loss.item() if first is None else first
        if loss.item() < first / 2:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2, f"loss {first:.3f} -> {loss.item():.3f} after 100 steps"
