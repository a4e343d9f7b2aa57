"""Where inspection reads the phi network (`phi1.inspect.hooks`; blocks are `model.layers`, attention
`block.attn`): the attention probabilities recomputed from the attention module's own weights and
the model's rotary tables, and the MLP's neuron activations gelu(fc1(ln(x)))."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from phi1.errors import Phi1Error
from phi1.model.base import apply_partial_rotary, softmax_scores


def attention_probs(attn: nn.Module, args: tuple) -> torch.Tensor:
    """softmax(QK^T/sqrt(D)) (B, H, T, T) float32 of phi's `Attention` for a plain causal call
    (x, cos, sin, mask=None)."""
    x, cos, sin = args[0], args[1], args[2]
    mask = args[3] if len(args) > 3 else None
    if mask is not None or (len(args) > 4 and args[4] is not None):
        raise Phi1Error("attention inspection needs a plain causal forward (no KV cache, no mask)")
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv, attn.head_dim
    w, b = attn.qkv.weight.float(), attn.qkv.bias.float()
    q = F.linear(x.float(), w[: H * D], b[: H * D]).view(B, T, H, D).transpose(1, 2)              # (B, H, T, D)
    k = F.linear(x.float(), w[H * D:(H + Hkv) * D], b[H * D:(H + Hkv) * D]).view(B, T, Hkv, D).transpose(1, 2)
    if attn.qk_layernorm:
        q, k = _float_ln(attn.q_layernorm, q), _float_ln(attn.k_layernorm, k)
    q = apply_partial_rotary(q, cos.float(), sin.float())
    k = apply_partial_rotary(k, cos.float(), sin.float())
    return softmax_scores(q, k, None)


def _float_ln(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # F.layer_norm on float copies: calling .float() on the module would change the model's dtype.
    return F.layer_norm(x, ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)


def mlp_pre(block: nn.Module) -> nn.Module:
    return block.mlp.fc1


def mlp_act(block: nn.Module, pre: torch.Tensor) -> torch.Tensor:
    return F.gelu(pre.float(), approximate=block.mlp.approximate)
