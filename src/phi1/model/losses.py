"""Losses the model families share: the chunked cross-entropy (fp32 math without an fp32 copy of the
logits, and fp16-safe gradients)."""

from __future__ import annotations

import torch


CE_CHUNK_ELEMENTS = 1 << 24  # fp32 elements upcast at a time by chunked_cross_entropy (64 MiB)


class _ChunkedCE(torch.autograd.Function):
    """Mean cross-entropy (ignore_index -100) over logits (N, V), upcast to fp32 one row-chunk at a time.

    The forward keeps only the per-row logsumexp (N fp32 values) beside the logits autograd already
    holds. The backward forms softmax - onehot chunk by chunk in fp32, multiplies it by the upstream
    gradient (the loss scale of fp16 training) and 1/n_valid in fp32, and only then casts to the
    logits' dtype: the same order of operations as `F.cross_entropy(logits.float())`, so fp16 gradients
    neither underflow to zero before the scale is applied nor overflow from casting the scale itself.
    No full fp32 copy of the logits (nor an fp32 log-softmax) ever exists."""

    @staticmethod
    def forward(ctx, logits, targets, rows: int, need_grad: bool):
        valid = targets != -100
        n_valid = valid.sum()
        safe = targets.clamp(min=0)
        total = logits.new_zeros((), dtype=torch.float32)
        lse_all = torch.empty(logits.shape[0], 1, dtype=torch.float32, device=logits.device) if need_grad else None
        for s in range(0, logits.shape[0], rows):
            x = logits[s : s + rows].float()
            lse = torch.logsumexp(x, dim=-1, keepdim=True)
            total = total + ((lse - x.gather(1, safe[s : s + rows, None])) * valid[s : s + rows, None]).sum()
            if need_grad:
                lse_all[s : s + rows] = lse
        if need_grad:
            ctx.save_for_backward(logits, safe, valid, lse_all, n_valid)
            ctx.rows = rows
        return total / n_valid

    @staticmethod
    def backward(ctx, go):
        logits, safe, valid, lse_all, n_valid = ctx.saved_tensors
        rows = ctx.rows
        coef = go.float() / n_valid  # fp32: the loss scale is applied before any cast to the logits' dtype
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], rows):
            g = logits[s : s + rows].to(torch.float32, copy=True).sub_(lse_all[s : s + rows]).exp_()  # softmax (fp32)
            t = safe[s : s + rows, None]
            g.scatter_add_(1, t, -torch.ones_like(t, dtype=g.dtype))
            g.mul_(valid[s : s + rows, None] * coef)
            grad[s : s + rows] = g
        return grad, None, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk_elements: int = CE_CHUNK_ELEMENTS):
    """F.cross_entropy(logits.float(), targets, ignore_index=-100) without a full fp32 copy of logits (N, V)."""
    rows = max(1, chunk_elements // logits.shape[-1])
    return _ChunkedCE.apply(logits, targets, rows, torch.is_grad_enabled() and logits.requires_grad)
