"""BEVTPretrainer: masked image + masked video modeling on one shared encoder -> a dict of losses.

Owns the encoder, the image and video decoders, the shared final LayerNorm (`encoder.norm`,
which becomes the finetuning norm) and one token classifier shared by both streams. It computes
its own targets with a frozen tokenizer (`target_tokens`, only for the frames that hold masked
cells), so the training loop only feeds batches (DESIGN.md); a caller that wants the tokenizer's
time apart passes the targets it computed with `target_tokens` as `targets=`:

    image_batch = {"image": (B,3,H,W), "image_tok": (B,3,H/2,W/2) in [0,1], "mask": (B,H/16,W/16)}
    video_batch = {"video": (B,3,T,H,W), "video_tok": (B,3,T,H/2,W/2) in [0,1], "mask": (B,T/2,H/16,W/16)}

plus, optionally, "host_mask": a `HostMask` holding the same mask on the host (the loader's),
from which the masked cells are picked without a host-device synchronisation.

Loss (paper Eq. 3-5): cross-entropy over masked cells only, averaged per stream,
L = L_MIM + video_loss_weight * L_MVM. The video mask lives on the T/2 patch steps and is repeated
x2 in time for the per-frame token labels.

The tokenizer is held outside the module tree (not a registered submodule): it is absent from
`state_dict()`, `parameters()` and DDP, so checkpoints hold only trainable weights and the
tokenizer is re-read from its own directory; `forward` moves it to the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bevt.masking import mask_to_patch_grid, mask_to_token_grid


class HostMask:
    """A stream's mask as the loader made it, on the host. Not a tensor, so DDP and FSDP, which
    move every tensor of a forward's inputs to the device, leave it where it is; the masked cells
    are then picked (nonzero, their count) without waiting for the device."""

    __slots__ = ("mask",)

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
from bevt.models.decoders import ImageDecoder, VideoDecoder
from bevt.tokenizers.base import Tokenizer

STREAMS = ("joint", "image", "video")
# Token id of the cells of frames `target_tokens` skipped because no cell of them is masked.
NOT_A_TARGET = -1


class BEVTPretrainer(nn.Module):
    """Encoder + decoders + shared norm and token head; `streams` picks BEVT, BEVT-I or BEVT-V."""

    def __init__(self, encoder: nn.Module, tokenizer: Tokenizer, streams: str = "joint", video_loss_weight: float = 1.0):
        super().__init__()
        if streams not in STREAMS:
            raise ValueError(f"streams={streams!r} must be one of {', '.join(STREAMS)}")
        self.streams = streams
        self.video_loss_weight = video_loss_weight
        self.encoder = encoder
        num_features = encoder.num_features  # 8C
        self.image_decoder = ImageDecoder(num_features) if streams in ("joint", "image") else None
        self.video_decoder = VideoDecoder(num_features) if streams in ("joint", "video") else None
        self.token_head = nn.Linear(num_features, tokenizer.vocab_size)
        object.__setattr__(self, "tokenizer", tokenizer.eval().requires_grad_(False))  # unregistered, see module doc

    def forward(self, image_batch: dict | None = None, video_batch: dict | None = None,
                targets: dict[str, torch.Tensor] | None = None) -> dict:
        """-> {"loss", "loss_image", "acc_image", "loss_video", "acc_video"} for the streams that
        ran; `loss` is the one to backpropagate, accuracies are detached. `targets` maps a stream to
        its `target_tokens`; streams without one are tokenized here."""
        batches = {"image": image_batch, "video": video_batch}
        if all(batch is None for batch in batches.values()):
            raise ValueError("forward needs an image_batch, a video_batch or both")
        batches = {stream: batch for stream, batch in batches.items() if batch is not None}
        for stream in batches:
            if self._decoder(stream) is None:
                raise ValueError(f"a {stream} batch was given to a pretrainer built with streams={self.streams!r}")
        targets = dict(targets or {})
        untokenized = [stream for stream in batches if stream not in targets]
        if untokenized:
            tokens = self.target_tokens_streams([(batches[s][f"{s}_tok"], batches[s]["mask"]) for s in untokenized])
            targets.update(zip(untokenized, tokens))
        for stream, batch in batches.items():
            cell_mask = batch["mask"]
            loss_mask = mask_to_token_grid(cell_mask) if stream == "video" else cell_mask  # (B,[T],h,w)
            if loss_mask.shape != targets[stream].shape:
                raise ValueError(
                    f"{stream} mask {tuple(cell_mask.shape)} does not match the token grid {tuple(targets[stream].shape)} "
                    f"of the tokenizer view {tuple(batch[f'{stream}_tok'].shape)}"
                )
        # both streams through one pass of the shared encoder (see VideoSwinEncoder.forward_streams)
        stages = self.encoder.forward_streams([(b[stream], mask_to_patch_grid(b["mask"])) for stream, b in batches.items()])
        out = {}
        loss = 0.0
        for (stream, batch), stream_stages in zip(batches.items(), stages):
            cell_mask, tokens = batch["mask"], targets[stream]
            features = self._decoder(stream)(stream_stages["stage3"], stream_stages["stage4"])  # (B,[T],h,w,8C)
            # Only masked cells reach the classifier: the loss ignores the rest, and the 8C x vocab
            # head is a large share of the compute. Their rows come from the host mask when the
            # batch has one, so neither the selection nor the count waits for the device.
            host_mask = batch["host_mask"].mask if "host_mask" in batch else cell_mask
            rows = (mask_to_token_grid(host_mask) if stream == "video" else host_mask).flatten().nonzero().squeeze(1)
            count = max(len(rows), 1)
            rows = rows.to(features.device, non_blocking=True)
            logits = self.token_logits(features.flatten(0, -2).index_select(0, rows))  # (M, vocab)
            masked_targets = tokens.flatten().index_select(0, rows)  # (M,)
            stream_loss = F.cross_entropy(logits, masked_targets, reduction="sum") / count
            out[f"loss_{stream}"] = stream_loss
            hits = (logits.detach().argmax(-1) == masked_targets).sum()
            out[f"acc_{stream}"] = hits.float() / count
            loss = loss + (self.video_loss_weight if stream == "video" else 1.0) * stream_loss
        out["loss"] = loss
        return out

    def decode_features(self, pixels: torch.Tensor, cell_mask: torch.Tensor) -> torch.Tensor:
        """Image (B,3,H,W) + mask (B,H/16,W/16) -> (B,H/16,W/16,8C); video (B,3,T,H,W) + mask
        (B,T/2,H/16,W/16) -> (B,T,H/16,W/16,8C). Decoder output, before the shared norm."""
        stream = "video" if pixels.dim() == 5 else "image"
        stages = self.encoder.forward_features(pixels, mask=mask_to_patch_grid(cell_mask))
        return self._decoder(stream)(stages["stage3"], stages["stage4"])

    def token_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(..., 8C) -> (..., vocab): shared final norm, then the shared classifier."""
        return self.token_head(self.encoder.norm(features))

    @torch.no_grad()
    def predict_tokens(self, pixels: torch.Tensor, cell_mask: torch.Tensor) -> torch.Tensor:
        """Most likely token at every cell: (B,H/16,W/16) for images, (B,T,H/16,W/16) for videos."""
        return self.token_logits(self.decode_features(pixels, cell_mask)).argmax(-1)

    def target_tokens(self, tokenizer_view: torch.Tensor, cell_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokenizer view (B,3,H/2,W/2) -> (B,H/16,W/16), or (B,3,T,H/2,W/2) -> (B,T,H/16,W/16).

        With the stream's `cell_mask` only the images / frames that hold masked cells are
        tokenized (a tube covers 4-8 of 8 steps, so about a quarter of the frames need no
        tokens); the others get NOT_A_TARGET, which the loss never reads. A mask on the host
        (as the loader made it) picks those frames without waiting for the device.
        """
        return self.target_tokens_streams([(tokenizer_view, cell_mask)])[0]

    def target_tokens_streams(self, views: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
        """`target_tokens` of several streams [(tokenizer view, cell mask or None), ...], from one
        call of the tokenizer on all their frames that need tokens (when the frames share a size)."""
        parameter = next(self.tokenizer.parameters())
        if parameter.device != views[0][0].device:
            self.tokenizer.to(views[0][0].device)
        plans, frames = [], []
        for tokenizer_view, cell_mask in views:
            video = tokenizer_view.dim() == 5
            pixels = tokenizer_view.transpose(1, 2).flatten(0, 1) if video else tokenizer_view  # (B*[T],3,h,w)
            grid = tuple(s // self.tokenizer.downsample for s in pixels.shape[-2:])
            needed = None
            if cell_mask is not None:
                loss_mask = mask_to_token_grid(cell_mask) if video else cell_mask  # (B,[T],h,w)
                if loss_mask.shape != tokenizer_view.shape[:1] + tokenizer_view.shape[2:-2] + grid:
                    raise ValueError(f"mask {tuple(cell_mask.shape)} does not match the token grid of the tokenizer "
                                     f"view {tuple(tokenizer_view.shape)}")
                needed = loss_mask.flatten(0, -3).flatten(1).any(1).nonzero().squeeze(1)  # (frames,)
                needed = needed.to(pixels.device, non_blocking=True)
                pixels_needed = pixels.index_select(0, needed)
            else:
                pixels_needed = pixels
            frames_shape = tokenizer_view.shape[:1] + tokenizer_view.shape[2:3] if video else None  # (B, T)
            plans.append((len(pixels), grid, needed, frames_shape))
            frames.append(pixels_needed)
        if len({f.shape[1:] for f in frames}) == 1:
            counts = [len(f) for f in frames]
            joined = torch.cat(frames) if len(frames) > 1 else frames[0]
            encoded = torch.split(self.tokenizer.encode(joined), counts) if sum(counts) else [None] * len(frames)
        else:
            encoded = [self.tokenizer.encode(f) if len(f) else None for f in frames]
        results = []
        for (count, grid, needed, frames_shape), ids in zip(plans, encoded):
            if needed is not None:  # NOT_A_TARGET where no cell is masked
                ids_needed = ids
                ids = torch.full((count, *grid), NOT_A_TARGET, dtype=torch.long, device=needed.device)
                if len(needed):
                    ids.index_copy_(0, needed, ids_needed)
            results.append(ids if frames_shape is None else ids.unflatten(0, frames_shape))
        return results

    def _decoder(self, stream: str) -> nn.Module | None:
        return self.image_decoder if stream == "image" else self.video_decoder
