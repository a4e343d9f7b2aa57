"""Where inspection reads the phi-3 network (`phi1.inspect.hooks`; blocks are `model.layers`, attention
`block.attn`): the attention probabilities recomputed from the fused `qkv_proj` and the model's
(LongRoPE) rotary rows, with grouped-query heads and the sliding window, and the neurons of the
gated MLP: silu(gate) * up."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from phi1.errors import Phi1Error
from phi1.model.base import softmax_scores
from phi1.model.phi3.network import rotary


def attention_probs(attn: nn.Module, args: tuple) -> torch.Tensor:
    """softmax(QK^T/sqrt(D)) (B, H, T, T) float32 of `Attention3` for a plain forward (x, cos, sin,
    mask): mask is None (causal) or the sliding window's boolean (1, 1, T, T) mask."""
    x, cos, sin = args[0], args[1], args[2]
    mask = args[3] if len(args) > 3 else None
    if len(args) > 4 and args[4] is not None:
        raise Phi1Error("attention inspection needs a plain causal forward (no KV cache)")
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv, attn.head_dim
    w = attn.qkv_proj.weight.float()
    q = F.linear(x.float(), w[: H * D]).view(B, T, H, D).transpose(1, 2)                          # (B, H, T, D)
    k = F.linear(x.float(), w[H * D:(H + Hkv) * D]).view(B, T, Hkv, D).transpose(1, 2)
    q, k = rotary(q, cos.float(), sin.float()), rotary(k, cos.float(), sin.float())
    return softmax_scores(q, k, None if mask is None else mask.to(torch.bool))


def mlp_pre(block: nn.Module) -> nn.Module:
    return block.mlp.gate_up_proj


def mlp_act(block: nn.Module, pre: torch.Tensor) -> torch.Tensor:
    gate, up = pre.float().chunk(2, dim=-1)
    return up * F.silu(gate)
