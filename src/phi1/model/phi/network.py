"""The phi-1 network: a decoder-only transformer with parallel attention + MLP blocks.

Each block computes `x + attn(ln(x)) + mlp(ln(x))` from ONE shared LayerNorm;
rotary embeddings cover the first `rotary_dim` dims of each head (rotate-half);
GELU (tanh); biases on every linear; an untied LM head with bias. Attention uses
PyTorch SDPA, so flash/memory-efficient kernels run on GPU.

q, k and v live in one fused `qkv` linear (one matmul instead of three); the
Hugging Face layout's separate q_proj/k_proj/v_proj are split/joined in hf.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from phi1.model.base import CausalLM, KVCache, apply_partial_rotary, split_heads
from phi1.model.phi.config import PhiConfig


class Attention(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=True)
        self.dense = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=True)
        self.qk_layernorm = cfg.qk_layernorm
        if cfg.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
        self.attn_dropout = cfg.attention_dropout
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv, self.head_dim
        q, k, v = split_heads(self.qkv(x), H, Hkv, D)  # (B, H, T, D), (B, Hkv, T, D) x 2
        if self.qk_layernorm:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q = apply_partial_rotary(q, cos, sin)
        k = apply_partial_rotary(k, cos, sin)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout,
                                               enable_gqa=Hkv != H)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               enable_gqa=Hkv != H)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        return self.dense(y)


class MLP(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)
        self.approximate = "none" if cfg.hidden_act == "gelu" else "tanh"

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Block(nn.Module):
    """x + attn(ln(x)) + mlp(ln(x)): attention and MLP in parallel from one LayerNorm."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        h = self.ln(x)
        a = self.resid_dropout(self.attn(h, cos, sin, mask, input_pos, kv_len))
        m = self.resid_dropout(self.mlp(h))
        return x + a + m


class PhiForCausalLM(CausalLM):
    def __init__(self, config: PhiConfig):
        super().__init__(config, Block, "final_ln", nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
                         head_bias=True)

    # ---- set-up ----------------------------------------------------------
    def _build_rope(self, length: int, device=None) -> None:
        cfg = self.config
        r = cfg.rotary_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, r, 2, dtype=torch.int64, device=device).float() / r))
        t = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)                 # (S, r/2)
        emb = torch.cat((freqs, freqs), dim=-1)          # (S, r)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self._rope_len = length

    def reset_parameters(self) -> None:
        """Initialise for training from scratch.

        N(0, 0.02) for embeddings and linears, zero biases, and GPT-2's
        1/sqrt(2L) scaling on the two projections that write into the residual
        stream (attention output and fc2), which keeps the residual variance
        flat with depth.
        """
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                s = resid_std if name.endswith(("attn.dense", "mlp.fc2")) else std
                nn.init.normal_(mod.weight, mean=0.0, std=s)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    # ---- forward ---------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                      kv_len: int | None = None, causal: bool = False) -> torch.Tensor:
        """Final-layernormed hidden states (B, T, d).

        Without `input_pos` this is a plain causal pass over positions 0..T-1.
        With `input_pos` (B, T) it reads/writes the KV cache at those positions and
        attends to cache slots [0, kv_len) that are <= each query's position.
        `causal` promises that every row's `input_pos` is 0..T-1 and kv_len == T (a prefill from the
        start): the mask is then plain causal, and SDPA runs with is_causal (flash attention on GPU)
        instead of an explicit (B, 1, T, S) mask.
        """
        B, T = input_ids.shape
        x = self.embed_dropout(self.embed(input_ids))  # (B, T, C)
        mask = None
        if input_pos is None:
            if T > self._rope_len:
                raise ValueError(f"sequence length {T} exceeds max_position_embeddings {self._rope_len}")
            cos = self.rope_cos[:T].to(x.dtype)[None, None]  # (1, 1, T, r)
            sin = self.rope_sin[:T].to(x.dtype)[None, None]
        else:
            cos = self.rope_cos[input_pos].to(x.dtype)[:, None]  # (B, 1, T, r)
            sin = self.rope_sin[input_pos].to(x.dtype)[:, None]
            if not causal:
                S = kv_len if kv_len is not None else self.cache_shape[1]
                slots = torch.arange(S, device=input_ids.device)
                mask = (slots[None, None, :] <= input_pos[:, :, None])[:, None]  # (B, 1, T, S)
        for blk in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(blk, x, cos, sin, mask, input_pos, kv_len, use_reentrant=False)
            else:
                x = blk(x, cos, sin, mask, input_pos, kv_len)
        return self.final_ln(x)
