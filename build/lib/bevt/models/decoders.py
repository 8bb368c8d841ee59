"""BEVT's lightweight decoders: encoder stages 3 + 4 -> one feature per target token.

Paper Sec. 3.2 / Fig. 3: upsample stage 4 spatially with a transposed conv (kernel = stride = 2),
concatenate stage 3, fuse with a linear layer; the video decoder then upsamples in time with a
second transposed conv (T' = T/2 -> T), because the tokenizer labels every frame. No activations
(as released). The shared final LayerNorm (`encoder.norm`) and token classifier follow in
`BEVTPretrainer`. Features are channels last, as the encoder returns them; C is the embed dim.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageDecoder(nn.Module):
    """stage3 (B,1,H/16,W/16,4C) + stage4 (B,1,H/32,W/32,8C) -> (B,H/16,W/16,8C)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(num_features, num_features, kernel_size=2, stride=2)
        self.fuse = nn.Linear(num_features + num_features // 2, num_features)

    def forward(self, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        stage3, stage4 = stage3.squeeze(1), stage4.squeeze(1)  # images are one-step clips
        height, width = stage3.shape[1:3]
        up = self.upsample(stage4.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B,2h4,2w4,8C)
        up = up[:, :height, :width]  # stage 4 was padded when stage 3 had an odd size
        return self.fuse(torch.cat([up, stage3], dim=-1))


class VideoDecoder(nn.Module):
    """stage3 (B,T',H/16,W/16,4C) + stage4 (B,T',H/32,W/32,8C) -> (B,T,H/16,W/16,8C), T = 2T'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.upsample = nn.ConvTranspose3d(num_features, num_features, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.fuse = nn.Linear(num_features + num_features // 2, num_features)
        self.temporal_upsample = nn.ConvTranspose3d(num_features, num_features, kernel_size=(2, 1, 1), stride=(2, 1, 1))

    def forward(self, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        height, width = stage3.shape[2:4]
        up = self.upsample(stage4.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)  # (B,T',2h4,2w4,8C)
        up = up[:, :, :height, :width]  # stage 4 was padded when stage 3 had an odd size
        fused = self.fuse(torch.cat([up, stage3], dim=-1))  # (B,T',H/16,W/16,8C)
        return self.temporal_upsample(fused.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
