"""BEVT's lightweight decoders: encoder stages 3 + 4 -> one feature per target token.

Paper Sec. 3.2 / Fig. 3: upsample stage 4 spatially with a transposed conv (kernel = stride = 2),
concatenate stage 3, fuse with a linear layer; the video decoder then upsamples in time with a
second transposed conv (T' = T/2 -> T), because the tokenizer labels every frame. No activations
(as released). The shared final LayerNorm (`encoder.norm`) and token classifier follow in
`BEVTPretrainer`. Features are channels last, as the encoder returns them; C is the embed dim.

A transposed conv whose kernel equals its stride maps every input token to kernel-many output
tokens by one matrix, so the decoders run theirs as one matmul on the channels-last features
(`TokenUpsample2d/3d`), which on CPU skips PyTorch's transposed-conv path and its layout
permutes. Their parameters are the transposed conv's (names, shapes, initialisation), so
checkpoints and the released-weight conversion are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def upsample_tokens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Transposed conv with kernel = stride on channels-last features: (B, *S, C_in) ->
    (B, *(S * kernel), C_out), for `weight` (C_in, C_out, *kernel) as torch's transposed convs hold it."""
    c_in, c_out, *kernel = weight.shape
    dims = len(kernel)
    # (tokens, C_in) @ (C_in, C_out * prod(kernel)), the bias repeated for each kernel position
    y = F.linear(x, weight.reshape(c_in, -1).t(), bias.repeat_interleave(math.prod(kernel)))
    y = y.view(*x.shape[:-1], c_out, *kernel)  # (B, *S, C_out, *kernel)
    # interleave each spatial axis with its kernel axis: (B, S1, k1, S2, k2, ..., C_out)
    order = [0] + [i for axis in range(dims) for i in (1 + axis, 2 + dims + axis)] + [1 + dims]
    size = [s * k for s, k in zip(x.shape[1:-1], kernel)]
    return y.permute(order).reshape(x.shape[0], *size, c_out)


class TokenUpsample2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` with kernel = stride, applied to channels-last (B,H,W,C) features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_tokens(x, self.weight, self.bias)


class TokenUpsample3d(nn.ConvTranspose3d):
    """`nn.ConvTranspose3d` with kernel = stride, applied to channels-last (B,T,H,W,C) features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_tokens(x, self.weight, self.bias)


class ImageDecoder(nn.Module):
    """stage3 (B,1,H/16,W/16,4C) + stage4 (B,1,H/32,W/32,8C) -> (B,H/16,W/16,8C)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.upsample = TokenUpsample2d(num_features, num_features, kernel_size=2, stride=2)
        self.fuse = nn.Linear(num_features + num_features // 2, num_features)

    def forward(self, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        stage3, stage4 = stage3.squeeze(1), stage4.squeeze(1)  # images are one-step clips
        height, width = stage3.shape[1:3]
        up = self.upsample(stage4)  # (B,2h4,2w4,8C)
        up = up[:, :height, :width]  # stage 4 was padded when stage 3 had an odd size
        return self.fuse(torch.cat([up, stage3], dim=-1))


class VideoDecoder(nn.Module):
    """stage3 (B,T',H/16,W/16,4C) + stage4 (B,T',H/32,W/32,8C) -> (B,T,H/16,W/16,8C), T = 2T'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.upsample = TokenUpsample3d(num_features, num_features, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.fuse = nn.Linear(num_features + num_features // 2, num_features)
        self.temporal_upsample = TokenUpsample3d(num_features, num_features, kernel_size=(2, 1, 1), stride=(2, 1, 1))

    def forward(self, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        height, width = stage3.shape[2:4]
        up = self.upsample(stage4)  # (B,T',2h4,2w4,8C)
        up = up[:, :, :height, :width]  # stage 4 was padded when stage 3 had an odd size
        fused = self.fuse(torch.cat([up, stage3], dim=-1))  # (B,T',H/16,W/16,8C)
        return self.temporal_upsample(fused)
