"""Attention inside Swin windows with an additive bias (relative-position bias, plus the shift mask).

`window_attention(qkv, attn_bias)` is what every Swin block calls. It runs PyTorch's
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


def window_attention(qkv, attn_bias):
    """softmax(q k^T / sqrt(d) + attn_bias) v in every window.

    qkv (3, B, nW, heads, N, d), q, k, v stacked so their gradient is one tensor (no copy to
    stack three); attn_bias (heads, N, N) (the relative-position bias) or (nW, heads, N, N)
    (plus each window's shift mask) -> (B, nW, heads, N, d).
    """
    if (USE_CPU_KERNEL and qkv.device.type == "cpu" and attn_bias.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):  # compiled, SDPA's graph is what the compiler fuses
        return _CpuWindowAttention.apply(qkv, attn_bias)
    out, _ = _fused_attention(qkv, attn_bias, F.scaled_dot_product_attention)
    return out


def _fused_attention(qkv, attn_bias, kernel):
    """Call an SDPA kernel on a layout where one additive mask broadcasts over the batch:
    windows in the batch dim when the (heads,N,N) bias is the whole mask, windows folded into
    the head dim, with a (1, nW*heads, N, N) mask, when it differs per window."""
    _, b, nw, heads, n, d = qkv.shape
    if attn_bias.dim() == 3:
        q, k, v = qkv.reshape(3, b * nw, heads, n, d).unbind(0)
        mask = attn_bias.unsqueeze(0)
    else:
        q, k, v = qkv.reshape(3, b, nw * heads, n, d).unbind(0)
        mask = attn_bias.reshape(1, nw * heads, n, n)
    result = kernel(q, k, v, attn_mask=mask.to(qkv.dtype))
    if isinstance(result, tuple):  # the CPU kernel also returns the softmax log-normaliser
        return result[0].reshape(b, nw, heads, n, d), result[1].reshape(b, nw, heads, n)
    return result.reshape(b, nw, heads, n, d), None


class _CpuWindowAttention(torch.autograd.Function):
    """SDPA's fused CPU kernel forward (it also returns the softmax log-normaliser); the backward
    recomputes the probabilities for a bounded number of (sample, window) pairs at a time, so
    nothing (N,N)-sized is kept between forward and backward but the bias itself.

    The backward recomputes the exact probabilities, shift mask included (with large logits a
    -100 mask does not mask, and the forward's softmax keeps those entries), with those below
    exp(LOG_PROB_FLOOR) set to 0 (see there). Each (N,N) temporary is touched by as few passes
    as it can be: the log-normaliser and rowsum(dO * O) ride in the matmuls (baddbmm with a
    broadcast (rows,N,1) input), the softmax scale in their alpha.
    """

    @staticmethod
    def forward(ctx, qkv, attn_bias):
        out, logsumexp = _fused_attention(qkv, attn_bias, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
        ctx.save_for_backward(qkv, attn_bias, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, attn_bias, out, logsumexp = ctx.saved_tensors
        q, k, v = qkv.unbind(0)
        _, batch, windows, heads, n, d = qkv.shape
        scale = d**-0.5
        per_window = attn_bias.dim() == 4
        neg_logsumexp = logsumexp.unsqueeze(-1).neg().to(qkv.dtype)  # (B,nW,heads,N,1)
        row_dot = (grad_out * out).sum(-1, keepdim=True)  # (B,nW,heads,N,1): rowsum(dO * O)
        grad_qkv = qkv.new_empty(qkv.shape)  # contiguous, so this step's slices view into it
        grad_q, grad_k, grad_v = grad_qkv.unbind(0)
        grad_bias = torch.zeros(attn_bias.shape, dtype=torch.promote_types(attn_bias.dtype, torch.float32))
        window_step = max(1, BACKWARD_STEP_FLOATS // (heads * n * n))
        batch_step = max(1, window_step // windows)
        for b0 in range(0, batch, batch_step):
            for w0 in range(0, windows, window_step):
                bs, ws = slice(b0, b0 + batch_step), slice(w0, w0 + window_step)
                step_windows = min(w0 + window_step, windows) - w0
                # this step's (samples*windows*heads, N, .) slices as 3-D batches
                qs, ks, vs, gos = (t[bs, ws].flatten(0, 2) for t in (q, k, v, grad_out))
                # log-probabilities: scale * q k^T - logsumexp + bias (+ shift mask)
                scores = torch.baddbmm(neg_logsumexp[bs, ws].flatten(0, 2), qs, ks.transpose(1, 2), alpha=scale)
                scores.view(-1, step_windows, heads, n, n).add_(attn_bias[ws] if per_window else attn_bias)
                probs = F.threshold_(scores, LOG_PROB_FLOOR, -math.inf).exp_()  # the forward's softmax
                torch.bmm(probs.transpose(1, 2), gos, out=grad_v[bs, ws].flatten(0, 2))
                # d(scores) = P * (dP - rowsum(dO * O)); summed over samples (and windows), d(bias)
                grad_scores = torch.baddbmm(row_dot[bs, ws].flatten(0, 2), gos, vs.transpose(1, 2), beta=-1).mul_(probs)
                step_sum = grad_scores.view(-1, step_windows, heads, n, n).sum(0)
                if per_window:
                    grad_bias[ws] += step_sum
                else:
                    grad_bias += step_sum.sum(0)
                grad_q_step, grad_k_step = grad_q[bs, ws].flatten(0, 2), grad_k[bs, ws].flatten(0, 2)
                torch.baddbmm(grad_q_step, grad_scores, ks, beta=0, alpha=scale, out=grad_q_step)
                torch.baddbmm(grad_k_step, grad_scores.transpose(1, 2), qs, beta=0, alpha=scale, out=grad_k_step)
        return grad_qkv, grad_bias.to(attn_bias.dtype)
