"""Video Swin Transformer encoder shared by BEVT's image and video streams.

Architecture from "Video Swin Transformer" (Liu et al., CVPR 2022) with the BEVT additions
(section 3 of the BEVT paper): an image stream with its own 2D patch embedding that runs through
the same blocks as a one-step clip, and one learnable mask token shared by both streams.

Shapes: B batch, T frames, H/W pixels, T' = T/2 temporal patch steps, C = embed_dim. Between
modules the tokens of every stream are the rows of one (rows, C) matrix: each stream's
(B,T',H',W') grid in row-major order, one stream after the other. BEVT's joint step sends its
image and video batches through the shared blocks together, so every per-token layer (norms,
attention projections, MLP) runs once per block on both streams' rows, and only the window
attention runs per stream (`TokenGrid`, `WindowLayout`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from bevt.models.window_attention import window_attention

VIDEO_PATCH = (2, 4, 4)
IMAGE_PATCH = (4, 4)
# Added to the logits of token pairs that come from different regions of a shifted window;
# the reference implementations use -100 (not -inf), so we do too for bit-level parity.
SHIFT_MASK_VALUE = -100.0


# ----------------------------------------------------------------------------------------------
# Window geometry: pure functions of shapes, cached so every forward reuses them.
# ----------------------------------------------------------------------------------------------


def clip_window(size, window, shift):
    """Video Swin's rule: a window at least as large as the feature shrinks to it, unshifted."""
    clipped_window = tuple(min(s, w) for s, w in zip(size, window))
    clipped_shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return clipped_window, clipped_shift


def released_image_window(size, window):
    """The released BEVT image stream's windows: the full spatial window, never clipped, shifted
    by half of it even where it covers the whole map (stage 4 at 7x7 rolls by 3)."""
    _, h, w = size
    if h % window[1] or w % window[2]:
        raise ValueError(f"image_shift_mask='official' needs feature maps that are multiples of the "
                         f"{window[1]}x{window[2]} window, as the released code does (no padding); got {h}x{w}")
    return (1, window[1], window[2]), (0, window[1] // 2, window[2] // 2)


def _offset_rows(offsets, table_window):
    """Row of a (2t-1)(2h-1)(2w-1)-row bias table for relative offsets (..., 3), (t,h,w)-major."""
    t, h, w = table_window
    shifted = offsets + torch.tensor([t - 1, h - 1, w - 1], device="cpu")
    return (shifted[..., 0] * (2 * h - 1) + shifted[..., 1]) * (2 * w - 1) + shifted[..., 2]


def _window_coords(window):
    """(N, 3) integer (t,h,w) coordinates of the tokens of a window, row-major."""
    grids = torch.meshgrid(*(torch.arange(n, device="cpu") for n in window), indexing="ij")
    return torch.stack(grids, -1).reshape(-1, 3)


@functools.lru_cache(maxsize=128)
def relative_position_index(window, table_window, reference_slicing, device):
    """Bias-table row for each (query, key) pair of a window: a flat LongTensor (N*N,).

    By default the offsets are those of the actual (possibly clipped) window. With
    `reference_slicing` the first N rows/cols of the full-window index are taken instead, as the
    reference implementations do; that is only geometrically right when the clipped window is a
    row-major prefix of the full one (e.g. (d,7,7) or (1,h,7)).
    """
    with torch.inference_mode(False):  # a cached index must be usable by later autograd passes
        n = math.prod(window)
        coords = _window_coords(table_window if reference_slicing else window)
        index = _offset_rows(coords[:, None, :] - coords[None, :, :], table_window)
        return index[:n, :n].reshape(-1).to(device)


@functools.lru_cache(maxsize=128)
def shift_window_mask(padded_size, window, shift, device):
    """Additive mask (nW, 1, N, N): 0 within a region of the rolled feature, -100 across regions.

    After the cyclic roll a window can hold tokens from up to three far-apart regions per axis;
    tokens attend only to tokens of their own region.
    """
    with torch.inference_mode(False):
        labels = torch.zeros(padded_size, dtype=torch.long, device="cpu")
        for axis, (size, w, s) in enumerate(zip(padded_size, window, shift)):
            region = torch.zeros(size, dtype=torch.long, device="cpu")
            region[size - w : size - s] = 1
            region[size - s :] = 2
            labels = labels * 3 + region.view([-1 if a == axis else 1 for a in range(3)])
        windows = window_partition(labels[None, ..., None], window)[0, ..., 0]  # (nW, N)
        different = windows[:, :, None] != windows[:, None, :]
        mask = torch.zeros(different.shape, device="cpu").masked_fill_(different, SHIFT_MASK_VALUE)
        return mask.unsqueeze(1).to(device)


def shifted_window_order(padded_size, window, shift):
    """Token permutation of a shifted block on one sample: for each position of the shifted
    windows (windows and their tokens row-major), the flat (t,h,w) index of the padded feature it
    holds. One gather by it replaces the cyclic roll (one copy per rolled axis) plus the window
    partition, forward and backward."""
    grid = torch.arange(math.prod(padded_size), device="cpu").view(padded_size)
    rolled = torch.roll(grid, shifts=[-s for s in shift], dims=(0, 1, 2))
    return window_partition(rolled[None, ..., None], window).reshape(-1)


@functools.lru_cache(maxsize=128)
def window_row_order(streams, device):
    """Row permutation of the token matrix in a block where some stream rolls: `streams` holds
    (batch, padded size, window, shift) per stream; the rows of a stream with a shift are put in
    shifted-window order, sample by sample, the others stay. -> (order, inverse)."""
    with torch.inference_mode(False):  # cached tensors must be usable by later autograd passes
        orders, start = [], 0
        for batch, padded, window, shift in streams:
            cells = math.prod(padded)
            if any(shift):
                per_sample = shifted_window_order(padded, window, shift)
            else:
                per_sample = torch.arange(cells, device="cpu")
            orders.append((start + torch.arange(batch, device="cpu")[:, None] * cells + per_sample).reshape(-1))
            start += batch * cells
        order = torch.cat(orders)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device="cpu")
        return order.to(device), inverse.to(device)


class _GatherRows(torch.autograd.Function):
    """`x.index_select(0, order)` for a permutation `order` of the rows, whose backward is the
    gather by the inverse permutation: index_select's own backward would scatter-add into zeros."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.inverse = inverse
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(0, ctx.inverse), None, None


class _RowViews(torch.autograd.Function):
    """(rows, C) -> consecutive blocks of rows as views of the given shapes (each shape's last
    dims may split C). The backward copies the blocks' gradients, whatever their strides, into
    one (rows, C) tensor: one copy, where a split and a reshape of each permuted gradient would
    make two."""

    @staticmethod
    def forward(ctx, x, shapes):
        ctx.shapes, ctx.channels = shapes, x.shape[1]
        parts = torch.split(x, [math.prod(shape) // x.shape[1] for shape in shapes])
        return tuple(part.view(shape) for part, shape in zip(parts, shapes))

    @staticmethod
    def backward(ctx, *grads):  # a block without a gradient arrives as zeros
        rows = [math.prod(shape) // ctx.channels for shape in ctx.shapes]
        grad_x = grads[0].new_empty(sum(rows), ctx.channels)
        for part, grad in zip(torch.split(grad_x, rows), grads):
            part.view(grad.shape).copy_(grad)
        return grad_x, None


class _JoinRows(torch.autograd.Function):
    """Tensors of any shapes and strides, each ending in C elements per row -> their rows one
    after another, (rows, C), written by one copy each; the backward hands each tensor its rows
    of the gradient as a view of its shape."""

    @staticmethod
    def forward(ctx, channels, *parts):
        ctx.shapes = [part.shape for part in parts]
        out = parts[0].new_empty(sum(part.numel() for part in parts) // channels, channels)
        for rows, part in zip(torch.split(out, [part.numel() // channels for part in parts]), parts):
            rows.view(part.shape).copy_(part)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad, channels = grad.contiguous(), grad.shape[1]
        rows = torch.split(grad, [math.prod(shape) // channels for shape in ctx.shapes])
        return (None, *(part.view(shape) for part, shape in zip(rows, ctx.shapes)))


def window_partition(x, window):
    """(B,T,H,W,C) -> (B, nW, N, C), windows and their tokens in (t,h,w) row-major order."""
    b, t, h, w, c = x.shape
    wt, wh, ww = window
    x = x.view(b, t // wt, wt, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wt * wh * ww, c)


# ----------------------------------------------------------------------------------------------
# Token layout: several streams' grids as the rows of one matrix
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrid:
    """One stream's rows in the encoder's token matrix: `batch` samples of a (T',H',W') grid
    each, row-major. `released_image_windows`: the stream takes the released image stream's
    windows (`released_image_window`)."""

    batch: int
    size: tuple[int, int, int]
    released_image_windows: bool = False

    @property
    def rows(self) -> int:
        return self.batch * math.prod(self.size)

    def merged(self) -> TokenGrid:
        """The grid after patch merging (H', W' halved, rounded up)."""
        t, h, w = self.size
        return TokenGrid(self.batch, (t, -(-h // 2), -(-w // 2)), self.released_image_windows)


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """A stream's windows in one block: its grid, the (clipped) window, the shift (zero in
    unshifted blocks), the bias-table row of every token pair, and the shift mask or None."""

    grid: TokenGrid
    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    bias_index: torch.Tensor
    shift_mask: torch.Tensor | None


def split_rows(x: torch.Tensor, grids) -> list[torch.Tensor]:
    """(rows, C) -> each stream's (B,T',H',W',C) view. One split, whose backward is one copy."""
    parts = torch.split(x, [g.rows for g in grids]) if len(grids) > 1 else (x,)
    return [part.view(g.batch, *g.size, x.shape[-1]) for part, g in zip(parts, grids)]


def join_rows(parts: list[torch.Tensor], channels: int | None = None) -> torch.Tensor:
    """Streams' tensors of any shapes and strides -> their rows of `channels` elements (default:
    the last dim), one stream after the other: (rows, channels), by one copy (none for one
    contiguous part)."""
    channels = channels or parts[0].shape[-1]
    if len(parts) == 1:
        return parts[0].reshape(-1, channels)
    return _JoinRows.apply(channels, *parts)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> C channels -> LayerNorm; pads the input up to whole patches.

    Conv3d with kernel = stride = (2,4,4) for videos, Conv2d with 4x4 for images.
    """

    def __init__(self, patch_size, embed_dim):
        super().__init__()
        conv = nn.Conv3d if len(patch_size) == 3 else nn.Conv2d
        self.patch_size = patch_size
        self.proj = conv(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):  # (B,3,[T],H,W) -> (B,[T'],H/4,W/4,C)
        pad = []
        for size, patch in zip(reversed(x.shape[2:]), reversed(self.patch_size)):
            pad += [0, -size % patch]
        if any(pad):
            x = F.pad(x, pad)
        return self.norm(self.proj(x).movedim(1, -1))


class WindowAttention(nn.Module):
    """Multi-head self-attention within (shifted) windows plus a learned relative-position bias.

    Holds the parameters; the window layout of each stream comes from the stage, which computes
    it once per input shape for all its blocks. The qkv and output projections are per token,
    the attention per stream.
    """

    def __init__(self, dim, num_heads, window_size):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        t, h, w = window_size
        rows = (2 * t - 1) * (2 * h - 1) * (2 * w - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, layouts):
        """x (rows, C) normalised, `layouts` one `WindowLayout` per stream -> (rows, C).

        All streams share the qkv and output projections (one matmul each) and the gather that
        takes rolled streams' tokens into window order; the attention runs per stream, on its
        own windows, bias and mask.
        """
        c = x.shape[1]
        heads, d = self.num_heads, c // self.num_heads
        grids = [layout.grid for layout in layouts]
        padded = [tuple(-(-s // w) * w for s, w in zip(g.size, layout.window)) for g, layout in zip(grids, layouts)]
        padding = [p != g.size for p, g in zip(padded, grids)]
        if any(padding):  # pad tokens are zero before qkv, as in the references
            x = join_rows([F.pad(part, (0, 0, 0, p[2] - g.size[2], 0, p[1] - g.size[1], 0, p[0] - g.size[0]))
                           for part, p, g in zip(split_rows(x, grids), padded, grids)])
        rolled = [layout.shift_mask is not None and any(layout.shift) for layout in layouts]
        if any(rolled):  # one gather takes the rolled streams' tokens into window order
            order, inverse = window_row_order(
                tuple((g.batch, p, layout.window, layout.shift if r else (0, 0, 0))
                      for g, p, layout, r in zip(grids, padded, layouts, rolled)), x.device)
            x = _GatherRows.apply(x, order, inverse)
        # windows per axis of each stream
        counts = [tuple(s // w for s, w in zip(p, layout.window)) for p, layout in zip(padded, layouts)]
        # qkv is per token, so project all rows at once; each stream's view then partitions its
        # windows (one copy, in the attention kernel's reshape)
        shapes = tuple((g.batch, math.prod(nw), math.prod(layout.window), 3, heads, d) if r else
                       (g.batch, nw[0], layout.window[0], nw[1], layout.window[1], nw[2], layout.window[2], 3, heads, d)
                       for g, nw, layout, r in zip(grids, counts, layouts, rolled))
        qkv_views = _RowViews.apply(self.qkv(x), shapes)
        # a contiguous (heads, rows) table makes the gather and its backward 3x faster on CPU;
        # one gather for all streams' bias entries
        table = self.relative_position_bias_table.t().contiguous()
        indices = [layout.bias_index for layout in layouts]
        biases = table.index_select(1, torch.cat(indices) if len(indices) > 1 else indices[0])
        biases = torch.split(biases, [len(index) for index in indices], dim=1) if len(indices) > 1 else [biases]
        outputs = []
        for qkv, bias, g, (nt, nh, nw), layout, r in zip(qkv_views, biases, grids, counts, layouts, rolled):
            (wt, wh, ww), n, windows = layout.window, math.prod(layout.window), nt * nh * nw
            qkv = qkv.permute(3, 0, 1, 4, 2, 5) if r else qkv.permute(7, 0, 1, 3, 5, 8, 2, 4, 6, 9)
            bias = bias.view(heads, n, n)
            out = window_attention(qkv.reshape(3, g.batch, windows, heads, n, d), bias, layout.shift_mask)
            # (B, nW, heads, N, d) -> the stream's rows: in window order where it rolled, else in
            # grid order; one copy for all streams (join_rows)
            outputs.append(out.transpose(2, 3) if r else
                           out.view(g.batch, nt, nh, nw, heads, wt, wh, ww, d).permute(0, 1, 5, 2, 6, 3, 7, 4, 8))
        x = join_rows(outputs, channels=c)
        if any(rolled):  # back to grid order
            x = _GatherRows.apply(x, inverse, order)
        if any(padding):
            padded_parts = split_rows(x, [TokenGrid(g.batch, p) for g, p in zip(grids, padded)])
            x = join_rows([part[:, : g.size[0], : g.size[1], : g.size[2]] for part, g in zip(padded_parts, grids)])
        return self.proj(x)


class DropPathResidual(nn.Module):
    """x + branch with stochastic depth on the branch: each sample's rows of it are dropped
    together with probability `drop_prob` and the kept ones scaled by 1/(1 - drop_prob), as
    timm's DropPath does to a (B, ...) tensor; the sample of a row comes from the streams'
    grids. Scale and sum are one pass (addcmul)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x, branch, grids):
        if self.drop_prob == 0.0 or not self.training:
            return x + branch
        keep = 1.0 - self.drop_prob
        samples = x.new_empty(sum(g.batch for g in grids), 1).bernoulli_(keep).div_(keep)
        # each sample's factor repeated over its rows, from sizes known on the host (no sync)
        factors = samples.split([g.batch for g in grids])
        scale = [factor.repeat_interleave(math.prod(g.size), 0) for factor, g in zip(factors, grids)]
        return torch.addcmul(x, branch, torch.cat(scale) if len(scale) > 1 else scale[0])


class _CpuMlp(torch.autograd.Function):
    """fc1 -> exact GELU -> fc2 on (rows, C) for CPU training in float32, with a written-out
    backward whose GELU gradient overwrites the hidden-size gradient it is computed from:
    autograd allocates a new hidden-size tensor (4C per token, a block's largest) for it, which
    on CPU costs a first touch of cold memory. The same products as autograd's."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        hidden = torch.addmm(fc1_bias, x, fc1_weight.t())
        activation = F.gelu(hidden)
        ctx.save_for_backward(x, hidden, activation, fc1_weight, fc2_weight)
        return torch.addmm(fc2_bias, activation, fc2_weight.t())

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, activation, fc1_weight, fc2_weight = ctx.saved_tensors
        grad_hidden = grad_out.mm(fc2_weight)
        grad_fc2_weight, grad_fc2_bias = grad_out.t().mm(activation), grad_out.sum(0)
        torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)  # in place
        grad_fc1_weight, grad_fc1_bias = grad_hidden.t().mm(x), grad_hidden.sum(0)
        grad_x = grad_hidden.mm(fc1_weight) if ctx.needs_input_grad[0] else None
        return grad_x, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight, grad_fc2_bias


class SwinMlp(Mlp):
    """timm's Mlp (fc1, exact GELU, fc2; its parameters and names) without dropout, run by
    `_CpuMlp` in CPU float32 training."""

    def __init__(self, dim, hidden):
        super().__init__(dim, hidden)
        # timm's Mlp wraps its hidden and output tensors in nn.Dropout(0.0), which in training
        # copies both every step; Swin blocks use no dropout, so those layers are identities.
        self.drop1 = self.drop2 = nn.Identity()

    def forward(self, x):  # (rows, C)
        if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
                and self.fc1.weight.requires_grad and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()):
            return _CpuMlp.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return super().forward(x)


class SwinBlock(nn.Module):
    """Pre-norm transformer block: (shifted) window attention, then an MLP, each residual."""

    def __init__(self, dim, num_heads, window_size, mlp_ratio, drop_path, shifted):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPathResidual(drop_path)

    def forward(self, x, layouts):  # x (rows, C), one WindowLayout per stream
        grids = [layout.grid for layout in layouts]
        x = self.drop_path(x, self.attn(self.norm1(x), layouts), grids)
        return self.drop_path(x, self.mlp(self.norm2(x)), grids)


class PatchMerging(nn.Module):
    """Spatial 2x downsampling: 2x2 neighbours concatenated (4C) -> LayerNorm -> Linear -> 2C."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x, grids):  # (rows, C) of `grids` -> (rows of the merged grids, 2C)
        merged = []
        for part in split_rows(x, grids):
            b, t, h, w, c = part.shape
            if h % 2 or w % 2:
                part = F.pad(part, (0, 0, 0, w % 2, 0, h % 2))
                h, w = h + h % 2, w + w % 2
            # (row, column) neighbour order (0,0), (1,0), (0,1), (1,1) as in the reference
            # checkpoints: column-major within each 2x2 cell. One permuted copy for all streams,
            # forward and backward (four strided slices and a cat cost a zero-filled full-size
            # gradient per slice in the backward).
            merged.append(part.view(b, t, h // 2, 2, w // 2, 2, c).permute(0, 1, 2, 4, 5, 3, 6))
        return self.reduction(self.norm(join_rows(merged, channels=4 * x.shape[1])))


class SwinStage(nn.Module):
    """Blocks of one resolution, alternating regular and shifted windows, then `downsample`.

    The stage computes each stream's window layout (clipped window and shift, bias index, shift
    mask) once per forward for all its blocks; the encoder calls `downsample` itself because BEVT
    needs the stage output before merging.
    """

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, drop_path_rates, downsample,
                 reference_bias_slicing):
        super().__init__()
        self.window_size = tuple(window_size)
        self.reference_bias_slicing = reference_bias_slicing
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, mlp_ratio, drop_path_rates[i], shifted=i % 2 == 1)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def window_layouts(self, grid: TokenGrid, device) -> dict[bool, WindowLayout]:
        """A stream's layout in unshifted (False) and shifted (True) blocks. The released image
        stream's windows apply the shift mask in every block, rolled by 0 in unshifted ones."""
        if grid.released_image_windows:
            window, shift = released_image_window(grid.size, self.window_size)
        else:
            window, shift = clip_window(grid.size, self.window_size, tuple(w // 2 for w in self.window_size))
        bias_index = relative_position_index(window, self.window_size, self.reference_bias_slicing, device)
        padded = tuple(-(-s // w) * w for s, w in zip(grid.size, window))
        mask = shift_window_mask(padded, window, shift, device) if any(shift) else None
        return {
            False: WindowLayout(grid, window, (0, 0, 0), bias_index, mask if grid.released_image_windows else None),
            True: WindowLayout(grid, window, shift, bias_index, mask),
        }

    def forward(self, x, grids):  # (rows, C) of `grids` -> same
        per_stream = [self.window_layouts(grid, x.device) for grid in grids]
        for block in self.blocks:
            layouts = [layouts_of_stream[block.shifted] for layouts_of_stream in per_stream]
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, layouts, use_reentrant=False)
            else:
                x = block(x, layouts)
        return x


class VideoSwinEncoder(nn.Module):
    """Video Swin backbone with BEVT's two streams (video and image) and a shared mask token.

    `reference_bias_slicing=True` reproduces the reference implementations' bias lookup for
    clipped windows (first N rows/cols of the full-window index), only needed for parity tests at
    tiny input sizes; the default builds the bias for the actual window.

    `image_shift_mask` chooses the image stream's windows: "standard" is 2D Swin (the shift mask
    only in shifted blocks; a window covering the whole map is clipped and unshifted), "official"
    is what the released BEVT code does and its checkpoints were trained with: the shift mask in
    every block and stage 4 (7x7) rolled by 3. The video stream is the same either way.
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=(8, 7, 7),
                 mlp_ratio=4.0, drop_path_rate=0.0, use_checkpoint=False, reference_bias_slicing=False,
                 image_shift_mask="standard"):
        super().__init__()
        if image_shift_mask not in ("standard", "official"):
            raise ValueError(f"image_shift_mask={image_shift_mask!r} must be 'standard' or 'official'")
        self.image_shift_mask = image_shift_mask
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.patch_embed = PatchEmbed(VIDEO_PATCH, embed_dim)
        self.patch_embed_2d = PatchEmbed(IMAGE_PATCH, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        blocks = sum(depths)  # stochastic depth grows linearly from 0 to drop_path_rate
        rates = [drop_path_rate * i / max(1, blocks - 1) for i in range(blocks)]
        self.layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2**i, depth, num_heads[i], window_size, mlp_ratio,
                rates[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < len(depths) - 1,
                reference_bias_slicing=reference_bias_slicing,
            )
            for i, depth in enumerate(depths)
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)
        trunc_normal_(self.mask_token, std=0.02)
        self.set_grad_checkpointing(use_checkpoint)

    def set_grad_checkpointing(self, enable=True):
        """Recompute each block in the backward pass instead of storing its activations."""
        for stage in self.layers:
            stage.use_checkpoint = enable

    def compile_blocks(self):
        """torch.compile every Swin block in place (regional compilation: blocks of one shape share
        their compiled code, so compiling costs little; parameter names stay the same)."""
        for stage in self.layers:
            for block in stage.blocks:
                block.compile(dynamic=False)

    def forward_features(self, x, mask=None):
        """Video (B,3,T,H,W) or image (B,3,H,W) -> {"stage3": (B,T',H/16,W/16,4C),
        "stage4": (B,T',H/32,W/32,8C)}, before the final norm; T' = 1 for images.

        `mask`: bool, (B,T',H/4,W/4) for video or (B,H/4,W/4) for images; True positions get the
        mask token after the patch-embedding LayerNorm.
        """
        return self.forward_streams([(x, mask)])[0]

    def forward_streams(self, streams):
        """[(pixels, mask), ...] -> one `forward_features` dict per stream, from one pass of the
        blocks over all streams' tokens (e.g. BEVT's image and video batches): each block's
        per-token layers run once on the rows of all streams, its window attention per stream.
        Each stream's result is the one `forward_features` gives it alone, up to rounding."""
        tokens, grids = [], []
        for x, mask in streams:
            released_image_windows = x.dim() == 4 and self.image_shift_mask == "official"
            if x.dim() == 5:
                x = self.patch_embed(x)  # (B,T',H/4,W/4,C)
            else:
                x = self.patch_embed_2d(x).unsqueeze(1)  # (B,1,H/4,W/4,C): a one-step clip
                mask = None if mask is None else mask.unsqueeze(1)
            if mask is not None:
                x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
            tokens.append(x)
            grids.append(TokenGrid(x.shape[0], tuple(x.shape[1:4]), released_image_windows))
        x = join_rows(tokens)
        features = {}
        for i, stage in enumerate(self.layers):
            x = stage(x, grids)
            features[f"stage{i + 1}"] = x, grids
            if stage.downsample is not None:
                x = stage.downsample(x, grids)
                grids = [grid.merged() for grid in grids]
        return [{"stage3": stage3, "stage4": stage4}
                for stage3, stage4 in zip(split_rows(*features["stage3"]), split_rows(*features["stage4"]))]

    def forward(self, x, mask=None):  # (B,3,[T],H,W) -> (B,8C)
        """Pooled feature: final norm on stage 4, averaged over all positions."""
        stage4 = self.norm(self.forward_features(x, mask)["stage4"])
        return stage4.mean(dim=(1, 2, 3))


def _init_weights(module):
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
