"""Attention inside Swin windows with a relative-position bias and the shift mask.

`window_attention(q, k, v, bias, shift_mask)` is what every Swin block calls. It runs PyTorch's
`scaled_dot_product_attention` everywhere except in CPU training, where it runs
`_CpuWindowAttention`: SDPA's fused CPU kernel returns no gradient for its additive mask, so
whenever the relative-position bias table trains, SDPA falls back to its unfused math path,
which materialises and keeps every (heads, N, N) probability tensor for the backward. The
kernel below keeps SDPA's fused forward and writes a backward that recomputes the
probabilities in bounded chunks. It only exists for CPU training speed (the demo, the tests);
benchmarks/backbone.py measures it against SDPA's own path (`--cpu-attention sdpa`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of the (heads,N,N) temporaries the CPU attention backward handles per step: 16 MB,
# few enough steps and below glibc's mmap threshold (32 MB), so buffers are reused without page faults.
BACKWARD_STEP_FLOATS = 2**22
# Probabilities below exp(-80) (a normal float32) are set to 0 in the CPU backward: exp of
# smaller logits takes float32 exp's slow path, and tiny values make denormal products in the
# matmuls after it (raising them to the floor instead made the backbone 1.6x slower)
LOG_PROB_FLOOR = -80.0
# The benchmark switches this off to time SDPA's own CPU path side by side.
USE_CPU_KERNEL = True


def window_attention(q, k, v, bias, shift_mask):
    """softmax(q k^T / sqrt(d) + bias + shift_mask) v in every window.

    q, k, v (B, nW, heads, N, d); bias (heads, N, N); shift_mask (nW, 1, N, N) or None.
    `scaled_dot_product_attention` everywhere but in CPU training: SDPA's fused CPU kernel
    cannot return the mask gradient, so SDPA would take its slow unfused path whenever the bias
    table trains; `_CpuWindowAttention` runs that fused kernel and writes the backward.
    """
    if USE_CPU_KERNEL and q.device.type == "cpu" and bias.requires_grad and torch.is_grad_enabled():
        return _CpuWindowAttention.apply(q, k, v, bias, shift_mask)
    out, _ = _fused_attention(q, k, v, bias, shift_mask, F.scaled_dot_product_attention)
    return out


def _fused_attention(q, k, v, bias, shift_mask, kernel):
    """Call an SDPA kernel on a layout where one additive mask broadcasts over the batch:
    windows in the batch dim when the (heads,N,N) bias is the whole mask, windows folded into
    the head dim, with a (1, nW*heads, N, N) mask, when the shift mask differs per window."""
    b, nw, heads, n, d = q.shape
    if shift_mask is None:
        q4, k4, v4 = (t.reshape(b * nw, heads, n, d) for t in (q, k, v))
        mask = bias.unsqueeze(0)
    else:
        q4, k4, v4 = (t.reshape(b, nw * heads, n, d) for t in (q, k, v))
        mask = (shift_mask + bias).view(1, nw * heads, n, n)
    result = kernel(q4, k4, v4, attn_mask=mask.to(q.dtype))
    if isinstance(result, tuple):  # the CPU kernel also returns the softmax log-normaliser
        return result[0].reshape(q.shape), result[1].reshape(q.shape[:-1])
    return result.reshape(q.shape), None


class _CpuWindowAttention(torch.autograd.Function):
    """SDPA's fused CPU kernel forward (it also returns the softmax log-normaliser); the backward
    recomputes the probabilities for a bounded number of (sample, window) pairs at a time, so
    nothing (N,N)-sized is kept between forward and backward.

    The backward recomputes the exact probabilities, shift mask included (with large logits a
    -100 mask does not mask, and the forward's softmax keeps those entries), with those below
    exp(LOG_PROB_FLOOR) set to 0 (see there).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, shift_mask):
        out, logsumexp = _fused_attention(
            q, k, v, bias, shift_mask, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        )
        ctx.save_for_backward(q, k, v, bias, shift_mask, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, shift_mask, out, logsumexp = ctx.saved_tensors
        batch, windows, heads, n, d = q.shape
        q_scaled = q * d**-0.5
        logsumexp = logsumexp.unsqueeze(-1).to(q.dtype)  # (B,nW,heads,N,1)
        row_dot = (grad_out * out).sum(-1, keepdim=True)  # (B,nW,heads,N,1): rowsum(dO * O)
        # contiguous, unlike q/k/v when one window covers the feature, so slices view into them
        grad_q, grad_k, grad_v = (t.new_empty(t.shape) for t in (q, k, v))
        grad_bias = torch.zeros(bias.shape, dtype=torch.promote_types(bias.dtype, torch.float32))
        window_step = max(1, BACKWARD_STEP_FLOATS // (heads * n * n))
        batch_step = max(1, window_step // windows)
        for b0 in range(0, batch, batch_step):
            for w0 in range(0, windows, window_step):
                bs, ws = slice(b0, b0 + batch_step), slice(w0, w0 + window_step)
                step_windows = min(w0 + window_step, windows) - w0
                # this step's (samples*windows*heads, N, .) slices as 3-D batches
                qs, ks, vs, gos = (t[bs, ws].flatten(0, 2) for t in (q_scaled, k, v, grad_out))
                scores = torch.bmm(qs, ks.transpose(1, 2)).sub_(logsumexp[bs, ws].flatten(0, 2))
                log_probs = scores.view(-1, step_windows, heads, n, n).add_(bias)
                if shift_mask is not None:
                    log_probs.add_(shift_mask[ws])
                probs = log_probs.masked_fill_(log_probs < LOG_PROB_FLOOR, -math.inf).exp_()
                probs = probs.view(-1, n, n)  # the forward's softmax
                torch.bmm(probs.transpose(1, 2), gos, out=grad_v[bs, ws].flatten(0, 2))
                # d(scores) = P * (dP - rowsum(dO * O)); summed over samples and windows, d(bias)
                grad_scores = torch.bmm(gos, vs.transpose(1, 2)).sub_(row_dot[bs, ws].flatten(0, 2)).mul_(probs)
                grad_bias += grad_scores.view(-1, heads, n, n).sum(0)
                torch.bmm(grad_scores, ks, out=grad_q[bs, ws].flatten(0, 2))
                torch.bmm(grad_scores.transpose(1, 2), qs, out=grad_k[bs, ws].flatten(0, 2))
        grad_q *= d**-0.5
        return grad_q, grad_k, grad_v, grad_bias.to(bias.dtype), None
