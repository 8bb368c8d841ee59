"""Classification head for finetuning: encoder -> final norm -> average pool -> dropout -> linear."""

from __future__ import annotations

from torch import nn


class VideoClassifier(nn.Module):
    """Video (B,3,T,H,W) -> logits (B,num_classes); the mmaction I3D head of the paper's recipes."""

    def __init__(self, encoder, num_classes, dropout=0.5):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.num_features, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, video):
        return self.head(self.dropout(self.encoder(video)))
