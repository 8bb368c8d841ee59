"""Video Swin encoder: shapes, parity with torchvision, the two streams, window geometry, training."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.video import swin3d_b, swin3d_t
from torchvision.ops import StochasticDepth

from bevt.cli import main
from bevt.checkpoint import load_strict
from bevt.models.convert import from_torchvision, inflate_patch_embed
from bevt.config import load_config
from bevt.errors import ConfigError
from bevt.models import MODEL_FLAVORS, VideoClassifier, create_model
from bevt.models import video_swin
from bevt.models.summary import model_summary
import bevt.models.window_attention
from bevt.models.video_swin import relative_position_index, shift_window_mask
from bevt.models.window_attention import window_attention

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomise_bias_tables(model, std=1.0):
    """Bias tables far from their 0.02 init, so a wrong bias row changes the output visibly."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(0, std)
    return model


def stage_outputs(encoder, x, mask=None):
    """Output of every stage (before merging) as a list, via forward hooks."""
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: outputs.append(o)) for stage in encoder.layers]
    try:
        encoder.forward_features(x, mask)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


# ----------------------------------------------------------------------------------------------
# Shapes and construction
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, t",
    [((2, 3, 8, 64, 64), 4), ((2, 3, 4, 32, 32), 2), ((2, 3, 64, 64), 1), ((2, 3, 32, 32), 1)],
)
def test_forward_features_shapes(shape, t):
    encoder = create_model("debug")
    h = shape[-1]
    features = encoder.forward_features(torch.randn(shape))
    assert features["stage3"].shape == (2, t, h // 16, h // 16, 4 * 32)
    assert features["stage4"].shape == (2, t, h // 32, h // 32, 8 * 32)
    assert encoder(torch.randn(shape)).shape == (2, 256)
    assert (encoder.embed_dim, encoder.num_features) == (32, 256)


def test_sizes_that_are_not_multiples_are_padded():
    encoder = create_model("debug")
    features = encoder.forward_features(torch.randn(1, 3, 5, 36, 44))
    assert features["stage3"].shape == (1, 3, 3, 3, 128)
    assert features["stage4"].shape == (1, 3, 2, 2, 256)


def test_classifier():
    model = create_model("debug", num_classes=7, head_dropout=0.2)
    assert isinstance(model, VideoClassifier)
    assert {key.split(".")[0] for key in model.state_dict()} == {"encoder", "head"}
    assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 7)
    assert model.dropout.p == 0.2 and create_model("debug", num_classes=7).dropout.p == 0.5
    assert model.head.weight.std() < 0.02 and not model.head.bias.any()


def test_unknown_flavor_names_the_choices():
    with pytest.raises(ConfigError, match="did you mean 'swin_t'"):
        create_model("swin-t")


def test_flavors_follow_the_paper():
    expected = {"swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
                "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32)), "swin_l": (192, (2, 2, 18, 2), (6, 12, 24, 48))}
    for name, (dim, depths, heads) in expected.items():
        flavor = MODEL_FLAVORS[name]
        assert (flavor["embed_dim"], flavor["depths"], flavor["num_heads"]) == (dim, depths, heads)
    assert create_model("debug", window_size=(4, 4, 4)).layers[0].blocks[0].attn.relative_position_bias_table.shape == (7**3, 1)


def test_drop_path_grows_linearly_to_the_rate():
    encoder = create_model("debug", drop_path_rate=0.35)
    blocks = [block for stage in encoder.layers for block in stage.blocks]
    assert blocks[0].drop_path.drop_prob == 0.0
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.35)
    assert blocks[4].drop_path.drop_prob == pytest.approx(0.35 * 4 / 7)


# ----------------------------------------------------------------------------------------------
# Parity with torchvision (and hence the official Video Swin)
# ----------------------------------------------------------------------------------------------


def test_matches_torchvision_swin3d_t_on_a_small_clip():
    """At 8x64x64 stage 3 is 4x4 with 4 steps: the windows are clipped spatially, where the
    reference slicing differs from the geometric bias; the switch reproduces torchvision."""
    torch.manual_seed(0)
    reference = randomise_bias_tables(swin3d_t(num_classes=400)).eval()
    converted = from_torchvision(reference.state_dict())
    ours = create_model("swin_t", num_classes=400, reference_bias_slicing=True).eval()
    load_strict(ours, converted, "test")
    video = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        expected = reference(video)
        assert (ours(video) - expected).abs().max() <= 1e-4
        geometric = create_model("swin_t", num_classes=400).eval()
        load_strict(geometric, converted, "test")
        assert (geometric(video) - expected).abs().max() > 1e-3


def test_gradients_match_torchvision():
    """Our CPU attention backward (bias-table gradient included) against torchvision's autograd."""
    torch.manual_seed(0)
    reference = randomise_bias_tables(swin3d_t(num_classes=10), std=0.3).train()
    for module in reference.modules():
        if isinstance(module, StochasticDepth):
            module.p = 0.0
    ours = create_model("swin_t", num_classes=10, reference_bias_slicing=True, head_dropout=0.0).train()
    load_strict(ours, from_torchvision(reference.state_dict()), "test")
    video = torch.randn(2, 3, 4, 64, 64)
    reference(video).square().sum().backward()
    ours(video).square().sum().backward()
    pairs = {"features.0.1.attn.relative_position_bias_table": "encoder.layers.0.blocks.1.attn.relative_position_bias_table",
             "features.4.3.attn.relative_position_bias_table": "encoder.layers.2.blocks.3.attn.relative_position_bias_table",
             "features.0.0.attn.qkv.weight": "encoder.layers.0.blocks.0.attn.qkv.weight",
             "patch_embed.proj.weight": "encoder.patch_embed.proj.weight"}
    theirs, mine = dict(reference.named_parameters()), dict(ours.named_parameters())
    for their_key, my_key in pairs.items():
        expected = theirs[their_key].grad
        assert (mine[my_key].grad - expected).abs().max() <= 1e-4 * expected.abs().max(), my_key


@pytest.mark.slow
@pytest.mark.parametrize("name, reference_fn", [("swin_t", swin3d_t), ("swin_b", swin3d_b)])
def test_matches_torchvision_at_full_size(name, reference_fn):
    torch.manual_seed(0)
    reference = reference_fn(num_classes=400).eval()
    ours = create_model(name, num_classes=400).eval()
    load_strict(ours, from_torchvision(reference.state_dict()), "test")
    video = torch.randn(2, 3, 16, 224, 224)
    with torch.no_grad():
        assert (ours(video) - reference(video)).abs().max() <= 1e-4


# ----------------------------------------------------------------------------------------------
# The two streams and the mask token
# ----------------------------------------------------------------------------------------------


def test_image_stream_is_video_stream_on_a_static_two_frame_clip():
    torch.manual_seed(0)
    encoder = randomise_bias_tables(create_model("debug")).eval()
    with torch.no_grad():
        encoder.patch_embed.proj.weight.copy_(inflate_patch_embed(encoder.patch_embed_2d.proj.weight))
        for name in ("proj.bias", "norm.weight", "norm.bias"):
            encoder.patch_embed.get_parameter(name).copy_(encoder.patch_embed_2d.get_parameter(name))
    image = torch.randn(2, 3, 64, 64)
    clip = torch.stack([image, image], dim=2)  # (B,3,2,H,W)
    mask = torch.rand(2, 16, 16) < 0.5
    with torch.no_grad():
        for image_mask, clip_mask in ((None, None), (mask, mask.unsqueeze(1))):
            for from_image, from_clip in zip(stage_outputs(encoder, image, image_mask),
                                             stage_outputs(encoder, clip, clip_mask), strict=True):
                assert from_image.shape == from_clip.shape
                assert (from_image - from_clip).abs().max() <= 1e-5


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (2, 3, 32, 32)])
def test_mask_token_replaces_exactly_the_masked_positions(shape):
    torch.manual_seed(0)
    encoder = create_model("debug")
    x = torch.randn(shape)
    grid = (2, 4, 8, 8) if len(shape) == 5 else (2, 8, 8)
    mask = torch.rand(grid) < 0.4
    seen = []
    encoder.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    encoder.forward_features(x, mask)
    tokens = seen[0].view(*grid, -1)  # the stage's (rows, C) input on the mask's grid
    embedded = encoder.patch_embed(x) if len(shape) == 5 else encoder.patch_embed_2d(x)
    assert torch.equal(tokens[mask], encoder.mask_token[0].expand(int(mask.sum()), -1))
    assert torch.equal(tokens[~mask], embedded[~mask])


def attention_calls(encoder, x):
    """(stage, block, map size, window, roll, shift mask applied) of every attention sublayer."""
    calls = []

    def record(stage, block):
        def hook(module, args):
            _, layouts = args
            for layout in layouts:
                calls.append((stage, block, layout.grid.size, layout.window, layout.shift, layout.shift_mask is not None))
        return hook

    hooks = [block.attn.register_forward_pre_hook(record(i, j))
             for i, stage in enumerate(encoder.layers) for j, block in enumerate(stage.blocks)]
    try:
        with torch.no_grad():
            encoder.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def test_official_image_windows_mask_every_block_and_roll_the_last_stage():
    """The released image stream: full window, shift window // 2 in odd blocks even where one
    window covers the map (stage 4), and the shift mask in every block."""
    image = torch.randn(1, 3, 128, 128)  # maps 32, 16, 8, 4 with the debug flavor's 4x4 window
    official = attention_calls(create_model("debug", image_shift_mask="official"), image)
    assert [call[2] for call in official[::2]] == [(1, 32, 32), (1, 16, 16), (1, 8, 8), (1, 4, 4)]
    for stage, block, _, window, roll, masked in official:
        assert window == (1, 4, 4) and masked
        assert roll == ((0, 2, 2) if block == 1 else (0, 0, 0))
    standard = attention_calls(create_model("debug"), image)
    assert [(roll, masked) for *_, roll, masked in standard[-2:]] == [((0, 0, 0), False), ((0, 0, 0), False)]
    assert [masked for *_, masked in standard[:2]] == [False, True]


@pytest.mark.parametrize("image_shift_mask, size", [("standard", 64), ("standard", 72), ("official", 128)])
def test_streams_in_one_pass_match_each_alone(image_shift_mask, size):
    """forward_streams (one pass of the blocks over a video and an image batch) gives each stream
    what forward_features gives it alone, and the same parameter gradients; in float64, with
    bias tables far from zero, masks, and at 72 px windows that need padding."""
    torch.manual_seed(0)
    encoder = randomise_bias_tables(create_model("debug", image_shift_mask=image_shift_mask)).double().train()
    video, image = torch.randn(2, 3, 4, size, size, dtype=torch.float64), torch.randn(3, 3, size, size, dtype=torch.float64)
    masks = torch.rand(2, 2, size // 4, size // 4) < 0.4, torch.rand(3, size // 4, size // 4) < 0.4
    weights = {}

    def loss_and_grads(streams_out):
        loss = 0
        for stream, features in enumerate(streams_out):
            for name, value in features.items():
                weight = weights.setdefault((stream, name), torch.randn(value.shape, dtype=torch.float64))
                loss = loss + (value * weight).sum()
        params = [p for p in encoder.parameters()]
        return [f.detach() for out in streams_out for f in out.values()], torch.autograd.grad(loss, params, allow_unused=True)

    joint, joint_grads = loss_and_grads(encoder.forward_streams([(video, masks[0]), (image, masks[1])]))
    alone, alone_grads = loss_and_grads([encoder.forward_features(video, masks[0]), encoder.forward_features(image, masks[1])])
    for a, b in zip(joint, alone, strict=True):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-12
    for a, b in zip(joint_grads, alone_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max() < 1e-12 * max(1.0, b.abs().max())


def test_drop_path_drops_whole_samples_of_each_stream():
    """Stochastic depth on the residual branch of two streams' rows: every sample's rows are
    dropped together or scaled by 1 / keep together, each sample independently."""
    torch.manual_seed(0)
    drop = video_swin.DropPathResidual(0.5).train()
    grids = [video_swin.TokenGrid(200, (2, 3, 3)), video_swin.TokenGrid(300, (1, 3, 3))]
    x, branch = torch.rand(sum(g.rows for g in grids), 4), torch.rand(sum(g.rows for g in grids), 4) + 1
    ratio = (drop(x, branch, grids) - x) / branch
    start = 0
    kept = []
    for grid in grids:
        per_sample = ratio[start:start + grid.rows].view(grid.batch, -1)
        start += grid.rows
        assert (per_sample - per_sample[:, :1]).abs().max() < 1e-5  # a sample's rows together
        assert ((per_sample[:, 0] - 2.0).abs() < 1e-5).logical_or(per_sample[:, 0].abs() < 1e-5).all()
        kept.append((per_sample[:, 0] > 1).float().mean().item())
    assert all(0.4 < k < 0.6 for k in kept)
    assert torch.equal(drop.eval()(x, branch, grids), x + branch)


def test_image_shift_mask_changes_only_the_image_stream():
    torch.manual_seed(0)
    standard = randomise_bias_tables(create_model("debug")).eval()
    official = create_model("debug", image_shift_mask="official").eval()
    official.load_state_dict(standard.state_dict())
    video, image = torch.randn(1, 3, 4, 64, 64), torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(official(video), standard(video))
        assert (official(image) - standard(image)).abs().max() > 1e-3


def test_official_image_windows_need_whole_windows():
    with pytest.raises(ValueError, match="multiples of the 4x4 window"):
        create_model("debug", image_shift_mask="official")(torch.randn(1, 3, 64, 64))  # stage 4 is 2x2
    with pytest.raises(ValueError, match="must be 'standard' or 'official'"):
        create_model("debug", image_shift_mask="released")
    with pytest.raises(ConfigError, match="image_shift_mask"):
        load_config("tiny_joint", ["model.image_shift_mask=released"])


# ----------------------------------------------------------------------------------------------
# Window geometry
# ----------------------------------------------------------------------------------------------


def brute_force_index(window, table_window):
    t, h, w = table_window
    coords = list(itertools.product(*(range(n) for n in window)))
    return torch.tensor([((a[0] - b[0] + t - 1) * (2 * h - 1) + a[1] - b[1] + h - 1) * (2 * w - 1) + a[2] - b[2] + w - 1
                         for a in coords for b in coords])


@pytest.mark.parametrize("window", [(8, 7, 7), (8, 4, 4), (2, 3, 7), (1, 7, 7), (3, 2, 5)])
def test_relative_position_index_is_that_of_the_actual_window(window):
    assert torch.equal(relative_position_index(window, (8, 7, 7), False, CPU), brute_force_index(window, (8, 7, 7)))


def test_image_windows_read_the_temporal_offset_zero_rows():
    rows = relative_position_index((1, 7, 7), (8, 7, 7), False, CPU)
    assert rows.min() >= 7 * 169 and rows.max() < 8 * 169  # the (t=0) block of a (t,h,w)-major table


def test_reference_slicing_agrees_only_on_row_major_prefixes():
    for window in [(4, 7, 7), (1, 3, 7), (8, 7, 7)]:
        assert torch.equal(relative_position_index(window, (8, 7, 7), True, CPU),
                           relative_position_index(window, (8, 7, 7), False, CPU))
    assert not torch.equal(relative_position_index((8, 4, 4), (8, 7, 7), True, CPU),
                           relative_position_index((8, 4, 4), (8, 7, 7), False, CPU))


def test_shift_mask_separates_tokens_that_were_not_neighbours():
    """After rolling by -shift, two tokens of one window were neighbours (and may attend to each
    other) iff their original coordinates differ by less than the window on every axis."""
    size, window, shift = (4, 8, 8), (2, 4, 4), (1, 2, 2)
    mask = shift_window_mask(size, window, shift, CPU)[:, 0]
    rolled = torch.stack(torch.meshgrid(*(torch.arange(n) for n in size), indexing="ij"), -1)
    original = (rolled + torch.tensor(shift)) % torch.tensor(size)  # (T,H,W,3)
    windows = video_swin.window_partition(original[None], window)[0]  # (nW, N, 3)
    neighbours = ((windows[:, :, None] - windows[:, None, :]).abs() < torch.tensor(window)).all(-1)
    assert torch.equal(mask == 0, neighbours)
    assert set(mask.unique().tolist()) == {0.0, video_swin.SHIFT_MASK_VALUE}


def test_windows_larger_than_the_feature_are_clipped_and_unshifted():
    assert video_swin.clip_window((4, 16, 16), (8, 7, 7), (4, 3, 3)) == ((4, 7, 7), (0, 3, 3))
    assert video_swin.clip_window((8, 4, 4), (8, 7, 7), (4, 3, 3)) == ((8, 4, 4), (0, 0, 0))


def test_geometry_is_cached_across_forwards():
    encoder = create_model("debug")
    video = torch.randn(1, 3, 8, 64, 64)
    encoder(video)
    misses = relative_position_index.cache_info().misses, shift_window_mask.cache_info().misses
    encoder(video)
    assert (relative_position_index.cache_info().misses, shift_window_mask.cache_info().misses) == misses


def test_geometry_cached_in_inference_mode_serves_training():
    relative_position_index.cache_clear()
    shift_window_mask.cache_clear()
    encoder = create_model("debug")
    video = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        encoder(video)
    encoder(video).sum().backward()


# ----------------------------------------------------------------------------------------------
# Training: gradients, checkpointing, mixed precision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [8, 32])
@pytest.mark.parametrize("batch, steps, shifted", [(3, 1, True), (5, 2, False), (2, 3, True), (2, 100, False)])
def test_cpu_attention_backward_matches_autograd(monkeypatch, batch, steps, shifted, head_dim):
    """Windows of 32 tokens with head_dim 8 take the kernel that recomputes the probabilities
    (`steps` (sample, window) pairs per backward step exercise its slicing), with head_dim 32
    the small-window kernel that keeps them."""
    windows, heads, n = 4, 3, 32
    monkeypatch.setattr(bevt.models.window_attention, "BACKWARD_STEP_FLOATS", steps * heads * n * n)
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, windows, heads, n, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(heads, n, n, dtype=torch.float64, requires_grad=True)
    shift_mask = shift_window_mask((2, 8, 8), (2, 4, 4), (1, 2, 2), CPU).double() if shifted else None
    grad = torch.randn(batch, windows, heads, n, head_dim, dtype=torch.float64)
    ours = torch.autograd.grad(window_attention(torch.stack([q, k, v]), bias, shift_mask), (q, k, v, bias), grad)
    scores = q @ k.transpose(-2, -1) / head_dim**0.5 + bias + (0 if shift_mask is None else shift_mask)
    expected = torch.autograd.grad(F.softmax(scores, -1) @ v, (q, k, v, bias), grad)
    for mine, theirs in zip(ours, expected, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-10)


@pytest.mark.parametrize("head_dim", [8, 16])
@pytest.mark.parametrize("scale", [10.0, 40.0])
def test_cpu_attention_backward_is_exact_when_logits_outgrow_the_shift_mask(scale, head_dim):
    """Trained attention can produce logits beyond +-100, where the -100 shift mask no longer
    masks: the forward keeps those probabilities, so the backward must too (it once zeroed
    them, giving wrong gradients, and nan when exp overflowed). Both CPU kernels: head_dim 8
    recomputes the probabilities, 16 keeps them."""
    torch.manual_seed(0)
    q, k = (torch.randn(2, 4, 2, 32, head_dim) * scale for _ in range(2))
    q, k = q.requires_grad_(), k.requires_grad_()
    v, bias = torch.randn(2, 4, 2, 32, head_dim, requires_grad=True), torch.randn(2, 32, 32, requires_grad=True)
    shift_mask = shift_window_mask((2, 8, 8), (2, 4, 4), (1, 2, 2), CPU)
    grad = torch.randn(2, 4, 2, 32, head_dim)
    ours = torch.autograd.grad(window_attention(torch.stack([q, k, v]), bias, shift_mask), (q, k, v, bias), grad)
    scores = q.double() @ k.double().transpose(-2, -1) / head_dim**0.5 + bias.double() + shift_mask.double()
    expected = torch.autograd.grad(F.softmax(scores, -1) @ v.double(), (q, k, v, bias), grad.double())
    for mine, theirs in zip(ours, expected, strict=True):
        assert torch.isfinite(mine).all()
        assert (mine - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def test_every_bias_table_and_the_mask_token_get_gradients():
    """A random projection of the pooled output: the final LayerNorm makes the plain sum of its
    output a constant, whose gradients are zero up to rounding (about 1e-7 in fp32)."""
    torch.manual_seed(0)
    encoder = create_model("debug")
    video, image = torch.randn(2, 3, 8, 64, 64), torch.randn(2, 3, 64, 64)
    mask = torch.rand(2, 4, 16, 16) < 0.5
    projection = torch.randn(encoder.num_features)
    ((encoder(video, mask) @ projection).sum() + (encoder(image) @ projection).sum()).backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 1e-4, name


def test_training_runs_no_dropout_in_the_blocks():
    """timm's Mlp holds nn.Dropout(0.0) layers, which in training copy the MLP's hidden and
    output tensors; the blocks replace them, so a training step runs no dropout at all (under
    bf16 autocast, where timm's forward runs rather than the CPU float32 kernel)."""
    torch.manual_seed(0)
    encoder = create_model("debug").train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = encoder(torch.randn(1, 3, 4, 32, 32))
        out.float().square().sum().backward()
    assert not [event.name for event in profile.events() if "dropout" in event.name]


def test_cpu_mlp_backward_matches_autograd():
    """The CPU training MLP (fc1, GELU, fc2 with a written-out backward, the GELU gradient in
    place) against autograd through the same layers, in float64; and in float32 the block's MLP
    takes that path and gives timm's forward's numbers."""
    torch.manual_seed(0)
    x = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(32, 8, dtype=torch.float64), torch.randn(32, dtype=torch.float64),
              torch.randn(8, 32, dtype=torch.float64), torch.randn(8, dtype=torch.float64)]
    params = [p.requires_grad_() for p in params]
    grad = torch.randn(50, 8, dtype=torch.float64)
    ours = video_swin._CpuMlp.apply(x, *params)
    reference = F.linear(F.gelu(F.linear(x, params[0], params[1])), params[2], params[3])
    assert (ours - reference).abs().max() < 1e-12
    for a, b in zip(torch.autograd.grad(ours, [x, *params], grad), torch.autograd.grad(reference, [x, *params], grad), strict=True):
        assert (a - b).abs().max() < 1e-10 * max(1.0, b.abs().max())
    mlp = video_swin.SwinMlp(8, 32)
    rows = torch.randn(50, 8, requires_grad=True)
    out = mlp(rows)
    assert type(out.grad_fn).__name__ == "_CpuMlpBackward"
    with torch.no_grad():
        assert torch.allclose(out, super(video_swin.SwinMlp, mlp).forward(rows), atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    encoder = create_model("debug", drop_path_rate=0.3).train()
    video = torch.randn(2, 3, 8, 64, 64)
    grads = []
    for use_checkpoint in (False, True):
        encoder.set_grad_checkpointing(use_checkpoint)
        encoder.zero_grad()
        torch.manual_seed(1)  # same drop-path draws in both runs
        encoder(video).square().sum().backward()
        grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
    assert len(grads[1]) == len(grads[0]) > 0
    for plain, checkpointed in zip(*grads, strict=True):
        assert torch.allclose(plain, checkpointed, atol=1e-6)
    assert create_model("debug", use_checkpoint=True).layers[2].use_checkpoint


@pytest.mark.slow
def test_encoder_compiles_as_one_graph_with_eager_numbers():
    """torch.compile(fullgraph=True) traces forward and backward without a graph break (the
    aot_eager backend checks the graph, not inductor's code generation) and gives eager's
    numbers: compiled, the attention is SDPA's, whose graph the compiler can fuse."""
    torch.manual_seed(0)
    encoder = randomise_bias_tables(create_model("debug"))
    video, mask = torch.randn(2, 3, 4, 32, 32), torch.rand(2, 2, 8, 8) < 0.5
    params = [p for name, p in encoder.named_parameters() if not name.startswith("patch_embed_2d.")]  # video only
    eager = encoder(video, mask)
    eager_grads = torch.autograd.grad(eager.square().sum(), params)
    compiled = torch.compile(encoder, fullgraph=True, backend="aot_eager")(video, mask)
    compiled_grads = torch.autograd.grad(compiled.square().sum(), params)
    assert torch.allclose(compiled, eager, atol=1e-5)
    for mine, theirs in zip(compiled_grads, eager_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)


@pytest.mark.slow
def test_compiled_blocks_run_both_streams_with_eager_numbers():
    """`run.compile` (`compile_blocks`, inductor): the same blocks see image and video shapes in
    one step; compiled with dynamic shapes, inductor failed on a symbolic guard there."""
    torch.manual_seed(0)
    encoder = randomise_bias_tables(create_model("debug"))
    video, image, mask = torch.randn(2, 3, 4, 32, 32), torch.randn(2, 3, 32, 32), torch.rand(2, 2, 8, 8) < 0.5
    eager = [encoder(video, mask), encoder(image)]
    eager_grads = torch.autograd.grad(sum(out.square().sum() for out in eager), list(encoder.parameters()))
    encoder.compile_blocks()
    compiled = [encoder(video, mask), encoder(image)]
    compiled_grads = torch.autograd.grad(sum(out.square().sum() for out in compiled), list(encoder.parameters()))
    for mine, theirs in zip(compiled + list(compiled_grads), eager + list(eager_grads), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)


def test_bf16_autocast_runs_on_cpu():
    encoder = create_model("debug")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(torch.randn(2, 3, 8, 64, 64))
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------
# `bevt info`
# ----------------------------------------------------------------------------------------------


def test_info_reproduces_the_paper_numbers():
    swin_b = model_summary("swin_b", frames=32, size=224, window_size=(8, 7, 7), num_classes=400)
    assert round(swin_b["params"] / 1e6, 2) == 88.05
    assert round(swin_b["macs"] / 1e9, 1) == 281.3
    assert round(model_summary("swin_t")["params"] / 1e6, 2) == 28.16
    ssv2 = model_summary("swin_b", frames=32, size=224, window_size=(16, 7, 7), num_classes=400)
    assert (round(ssv2["params"] / 1e6, 2), round(ssv2["macs"] / 1e9, 1)) == (89.07, 320.4)


def test_info_cli(capsys):
    assert main(["info", "debug", "--frames", "8", "--size", "64", "--window", "2,4,4", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "debug: window 2x4x4, 5 classes, view 8x64x64" in out and "GMACs per view" in out
    assert main(["info", "debug", "--window", "2,4"]) == 2
