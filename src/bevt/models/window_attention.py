"""Attention inside Swin windows with an additive bias (relative-position bias, plus the shift mask).

`window_attention(qkv, bias, shift_mask)` is what every Swin block calls. It runs PyTorch's
`scaled_dot_product_attention` everywhere except in CPU training: SDPA's fused CPU kernel returns
no gradient for its additive mask, so whenever the relative-position bias table trains, SDPA
falls back to its unfused math path (autograd through each op, probabilities as denormals where
the shift mask applies). Two kernels replace it there, both only for CPU training speed (the
demo, the tests); benchmarks/backbone.py measures them against SDPA's own path
(`--cpu-attention sdpa`):
- `_CpuWindowAttention` for windows larger than twice the head dim (every full-size Swin): SDPA's
  fused forward, and a backward that recomputes the probabilities in bounded chunks, because
  keeping them would cost more memory than q, k and v together;
- `_CpuSmallWindowAttention` for the others (the demo's 2x4x4 windows): the probabilities are
  at most 2/3 of the size of q, k, v, so the forward computes and keeps them and the backward
  recomputes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of the (heads,N,N) temporaries the CPU attention backward handles per step: 16 MB,
# few enough steps and below glibc's mmap threshold (32 MB), so buffers are reused without page faults.
BACKWARD_STEP_FLOATS = 2**22
# Probabilities below exp(-80) (a normal float32) are set to 0 by the CPU kernels: tiny values
# make denormal products in the matmuls after it (keeping exp(-80) instead made the backbone
# 1.6x slower). The log-probabilities are raised to the floor before exp and the floor's value
# zeroed after it: exp of smaller logits, and of -inf, takes float32 exp's slow path.
LOG_PROB_FLOOR = -80.0
PROB_FLOOR = math.exp(LOG_PROB_FLOOR)


def _exp_without_denormals_(log_probs):
    """exp of log-probabilities in place, those below LOG_PROB_FLOOR set to 0 (see there)."""
    return F.threshold_(log_probs.clamp_min_(LOG_PROB_FLOOR).exp_(), PROB_FLOOR, 0.0)


# The benchmark switches this off to time SDPA's own CPU path side by side.
USE_CPU_KERNEL = True


def window_attention(qkv, bias, shift_mask=None):
    """softmax(q k^T / sqrt(d) + bias [+ shift_mask]) v in every window.

    qkv (3, B, nW, heads, N, d), q, k, v stacked so their gradient is one tensor (no copy to
    stack three); bias (heads, N, N), the relative-position bias; shift_mask (nW, 1, N, N) or
    None, constant -> (B, nW, heads, N, d).
    """
    if (USE_CPU_KERNEL and qkv.device.type == "cpu" and bias.requires_grad and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):  # compiled, SDPA's graph is what the compiler fuses
        n, d = qkv.shape[-2:]
        kernel = _CpuWindowAttention if n > 2 * d else _CpuSmallWindowAttention
        return kernel.apply(qkv, bias, shift_mask)
    out, _ = _fused_attention(qkv, bias if shift_mask is None else shift_mask + bias, F.scaled_dot_product_attention)
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
    result = kernel(q, k, v, attn_mask=mask.to(qkv.dtype).contiguous())  # a stream's bias may be a strided view
    if isinstance(result, tuple):  # the CPU kernel also returns the softmax log-normaliser
        return result[0].reshape(b, nw, heads, n, d), result[1].reshape(b, nw, heads, n)
    return result.reshape(b, nw, heads, n, d), None


class _CpuWindowAttention(torch.autograd.Function):
    """SDPA's fused CPU kernel forward (it also returns the softmax log-normaliser); the backward
    recomputes the probabilities for a bounded number of (sample, window) pairs at a time, so
    nothing (N,N)-sized is kept between forward and backward; the shift mask stays separate from
    the bias, so the bias gradient is (heads,N,N) however many windows there are.

    The backward recomputes the exact probabilities, shift mask included (with large logits a
    -100 mask does not mask, and the forward's softmax keeps those entries), with those below
    exp(LOG_PROB_FLOOR) set to 0 (see there). Each (N,N) temporary is touched by as few passes
    as it can be: the log-normaliser and rowsum(dO * O) ride in the two score matmuls as one
    extra column of their operands (see `backward`). Only for windows larger than twice the head
    dim, where that column costs less than a broadcast pass over each (N,N) output.
    """

    @staticmethod
    def forward(ctx, qkv, bias, shift_mask):
        attn_bias = bias if shift_mask is None else shift_mask + bias
        out, logsumexp = _fused_attention(qkv, attn_bias, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
        ctx.save_for_backward(qkv, bias, shift_mask, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, bias, shift_mask, out, logsumexp = ctx.saved_tensors
        q, k, v = qkv.unbind(0)
        _, batch, windows, heads, n, d = qkv.shape
        scale = d**-0.5
        neg_logsumexp = logsumexp.unsqueeze(-1).neg().to(qkv.dtype)  # (B,nW,heads,N,1)
        neg_row_dot = (grad_out * out).sum(-1, keepdim=True).neg_()  # (B,nW,heads,N,1): -rowsum(dO * O)
        # The two (N,1) terms enter the score matmuls as one more column of their operands:
        # [scale q, -lse] [k, 1]^T = scale q k^T - lse and [dO, -rowsum] [v, 1]^T = dP - rowsum,
        # which costs a pass over q, k, v, dO instead of a broadcast fill of each (N,N) output.
        ones = qkv.new_ones(()).expand(*q.shape[:-1], 1)
        q_lse = torch.cat([q * scale, neg_logsumexp], dim=-1)
        k_ones, v_ones = torch.cat([k, ones], dim=-1), torch.cat([v, ones], dim=-1)
        grad_rowsum = torch.cat([grad_out, neg_row_dot], dim=-1)
        grad_qkv = qkv.new_empty(qkv.shape)  # contiguous, so this step's slices view into it
        grad_q, grad_k, grad_v = grad_qkv.unbind(0)
        grad_bias = None  # the first step's sum, then accumulated in float32 at least
        window_step = max(1, BACKWARD_STEP_FLOATS // (heads * n * n))
        batch_step = max(1, window_step // windows)
        # every step's two (N,N) temporaries reuse two buffers of at most BACKWARD_STEP_FLOATS
        step_shape = (min(batch_step, batch) * min(window_step, windows) * heads, n, n)
        score_buffer, grad_buffer = qkv.new_empty(step_shape), qkv.new_empty(step_shape)
        for w0 in range(0, windows, window_step):
            ws = slice(w0, w0 + window_step)
            # bias (+ each window's shift mask) of this step's windows: (windows or 1, heads, N, N)
            step_bias = bias.unsqueeze(0) if shift_mask is None else shift_mask[ws] + bias
            for b0 in range(0, batch, batch_step):
                bs = slice(b0, b0 + batch_step)

                def rows(t):  # this step's (samples*windows*heads, N, .) slice as a 3-D batch
                    return t[bs, ws].flatten(0, 2)

                qs, ks, gos = rows(q), rows(k), rows(grad_out)
                # log-probabilities: scale * q k^T - logsumexp + bias (+ shift mask)
                scores, grad_scores = score_buffer[: len(qs)], grad_buffer[: len(qs)]
                torch.bmm(rows(q_lse), rows(k_ones).transpose(1, 2), out=scores)
                scores.view(-1, *step_bias.shape).add_(step_bias)
                probs = _exp_without_denormals_(scores)  # the forward's softmax
                torch.bmm(probs.transpose(1, 2), gos, out=rows(grad_v))
                # d(scores) = P * (dP - rowsum(dO * O)); summed over samples and windows, d(bias)
                torch.bmm(rows(grad_rowsum), rows(v_ones).transpose(1, 2), out=grad_scores)
                grad_scores.mul_(probs)
                if grad_bias is None:
                    grad_bias = grad_scores.view(-1, heads, n, n).sum(0, dtype=torch.promote_types(bias.dtype, torch.float32))
                else:
                    grad_bias += grad_scores.view(-1, heads, n, n).sum(0)
                grad_q_step, grad_k_step = rows(grad_q), rows(grad_k)
                torch.baddbmm(grad_q_step, grad_scores, ks, beta=0, alpha=scale, out=grad_q_step)
                torch.baddbmm(grad_k_step, grad_scores.transpose(1, 2), qs, beta=0, alpha=scale, out=grad_k_step)
        return grad_qkv, grad_bias.to(bias.dtype), None


class _CpuSmallWindowAttention(torch.autograd.Function):
    """Windows of at most twice the head dim: the forward computes the probabilities and keeps
    them (no larger than q, k, v), so the backward is four matmuls and no recompute.

    The softmax is written out so that no probability is a denormal: the shift mask's -100 gives
    exp values below float32's normal range, which PyTorch's softmax returns as denormals, and a
    matmul over denormals runs many times slower on CPU. Log-probabilities are raised to
    LOG_PROB_FLOOR before exp and the floor's value zeroed after it, as the other kernel's
    backward does: those terms are below 1e-34 of the row's sum, so the result is the softmax's
    to float32 rounding.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under autocast: a float32 softmax
    def forward(ctx, qkv, bias, shift_mask):
        _, batch, windows, heads, n, d = qkv.shape
        qkv_rows = qkv.reshape(3, -1, n, d)  # a copy where qkv is a permuted view; kept for the backward
        q, k, v = qkv_rows.unbind(0)  # (B*nW*heads, N, d) each
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(d**-0.5)
        scores.view(batch, windows, heads, n, n).add_(bias if shift_mask is None else shift_mask + bias)
        probs = _exp_without_denormals_(scores.sub_(scores.amax(-1, keepdim=True)))
        probs.div_(probs.sum(-1, keepdim=True))
        out = torch.bmm(probs, v).view(batch, windows, heads, n, d)
        ctx.save_for_backward(qkv_rows, probs, out)
        ctx.qkv_shape = qkv.shape
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        qkv_rows, probs, out = ctx.saved_tensors
        _, batch, windows, heads, n, d = ctx.qkv_shape
        q, k, v = qkv_rows.unbind(0)
        grad_out = grad_out.contiguous()
        grad_rows = grad_out.view(-1, n, d)
        neg_row_dot = (grad_out * out).sum(-1, keepdim=True).neg_().view(-1, n, 1)  # -rowsum(dO * O)
        grad_qkv = qkv_rows.new_empty(ctx.qkv_shape)
        grad_q, grad_k, grad_v = grad_qkv.view(3, -1, n, d).unbind(0)
        torch.bmm(probs.transpose(1, 2), grad_rows, out=grad_v)
        # d(scores) = P * (dO v^T - rowsum(dO * O)), in place of dP
        grad_scores = torch.baddbmm(neg_row_dot, grad_rows, v.transpose(1, 2)).mul_(probs)
        grad_bias = grad_scores.view(-1, heads, n, n).sum(0)
        torch.baddbmm(grad_q, grad_scores, k, beta=0, alpha=d**-0.5, out=grad_q)
        torch.baddbmm(grad_k, grad_scores.transpose(1, 2), q, beta=0, alpha=d**-0.5, out=grad_k)
        return grad_qkv, grad_bias, None
