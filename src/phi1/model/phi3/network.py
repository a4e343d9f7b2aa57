"""The phi-3 network: pre-norm blocks, RMSNorm, SiLU-gated MLP, grouped-query attention, LongRoPE.

Each block computes `h = x + attn(norm1(x)); h + mlp(norm2(h))`; no linear has a bias. q, k and v
are one fused `qkv_proj` and gate and up one fused `gate_up_proj` (transformers' layout too, so
the weights map 1:1 in phi3/hf.py). The interface is `phi1.model.base.CausalLM`'s (`hidden_states`, `forward`,
`setup_caches`, `layers[i].attn.kv_cache`, `lm_head`), so generation, the server, the trainer and
eval run either family unchanged.

LongRoPE keeps two rotary tables; as in transformers, a row uses the long one when its largest
position is at or beyond `original_max_position_embeddings`, the short one otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from phi1.model.base import CausalLM, KVCache, apply_partial_rotary, split_heads, rotate_half
from phi1.model.phi3.config import Phi3Config


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on x (B, H, T, D): all of each head (phi-3) in one expression, else the first cos.shape[-1] dims."""
    if cos.shape[-1] == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    return apply_partial_rotary(x, cos, sin)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention3(nn.Module):
    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)
        self.attn_dropout = cfg.attention_dropout
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv, self.head_dim
        q, k, v = split_heads(self.qkv_proj(x), H, Hkv, D)  # (B, H, T, D), (B, Hkv, T, D) x 2
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                           enable_gqa=Hkv != H)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)


class GatedMLP(nn.Module):
    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class Block3(nn.Module):
    """h = x + attn(norm(x)); h + mlp(norm(h)): sequential pre-norm (phi-1/2 run them in parallel)."""

    def __init__(self, cfg: Phi3Config):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention3(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, cos, sin, mask=None, input_pos=None, kv_len=None):
        x = x + self.resid_dropout(self.attn(self.input_norm(x), cos, sin, mask, input_pos, kv_len))
        return x + self.resid_dropout(self.mlp(self.post_attn_norm(x)))


class Phi3ForCausalLM(CausalLM):
    """The cache, the logits/loss and the accounting are `CausalLM`'s (`phi1.model.base`)."""

    def __init__(self, config: Phi3Config):
        super().__init__(config, Block3, "final_norm", RMSNorm(config.hidden_size, config.rms_norm_eps),
                         head_bias=False)

    # ---- set-up ----------------------------------------------------------
    def _build_rope(self, length: int, device=None) -> None:
        """cos/sin tables (S, r); with LongRoPE a second pair for the long range, stacked on dim 0."""
        cfg = self.config
        r = cfg.rotary_dim
        base = cfg.rope_theta ** (torch.arange(0, r, 2, dtype=torch.int64, device=device).float() / r)
        scales = [None]
        if cfg.longrope:
            scales = [torch.tensor(cfg.rope_scaling[k], dtype=torch.float32, device=device)
                      for k in ("short_factor", "long_factor")]
        t = torch.arange(length, device=device, dtype=torch.float32)
        cos, sin = [], []
        for s in scales:
            inv_freq = 1.0 / (base if s is None else s * base)
            freqs = torch.outer(t, inv_freq)                 # (S, r/2)
            emb = torch.cat((freqs, freqs), dim=-1)          # (S, r)
            cos.append(emb.cos() * cfg.rope_attention_factor)
            sin.append(emb.sin() * cfg.rope_attention_factor)
        self.register_buffer("rope_cos", torch.stack(cos), persistent=False)  # (1 or 2, S, r)
        self.register_buffer("rope_sin", torch.stack(sin), persistent=False)
        self._rope_len = length

    def reset_parameters(self) -> None:
        """N(0, 0.02) for embeddings and linears, 1/sqrt(2L) on the residual writers, unit norms."""
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, mean=0.0, std=resid_std if name.endswith(("o_proj", "down_proj")) else std)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, RMSNorm):
                nn.init.ones_(mod.weight)

    # ---- forward ---------------------------------------------------------
    def _rope_rows(self, pos: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, r) for positions `pos` (B, T), each row choosing its LongRoPE table."""
        if self.rope_cos.shape[0] == 1:
            return self.rope_cos[0][pos].to(dtype)[:, None], self.rope_sin[0][pos].to(dtype)[:, None]
        orig = self.config.original_max_position_embeddings
        long = (pos.max(dim=1).values + 1 > orig).long()                      # (B,)
        table = long[:, None].expand_as(pos)
        return self.rope_cos[table, pos].to(dtype)[:, None], self.rope_sin[table, pos].to(dtype)[:, None]

    def _window_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Causal (and sliding-window) boolean mask: (..., Tq, Tk)."""
        diff = q_pos[..., :, None] - k_pos[..., None, :]
        ok = diff >= 0
        if self.config.sliding_window is not None:
            ok = ok & (diff < self.config.sliding_window)
        return ok

    def hidden_states(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                      kv_len: int | None = None, causal: bool = False) -> torch.Tensor:
        """Final-normed hidden states (B, T, d); `input_pos`/`kv_len`/`causal` as in
        PhiForCausalLM.hidden_states (a causal prefill longer than the sliding window keeps its mask)."""
        B, T = input_ids.shape
        x = self.embed_dropout(self.embed(input_ids))  # (B, T, C)
        mask = None
        if input_pos is None:
            if T > self._rope_len:
                raise ValueError(f"sequence length {T} exceeds max_position_embeddings {self._rope_len}")
            pos = torch.arange(T, device=input_ids.device)
            cos, sin = self._rope_rows(pos[None], x.dtype)                  # (1, 1, T, r)
            if self.config.sliding_window is not None and T > self.config.sliding_window:
                mask = self._window_mask(pos, pos)[None, None]               # (1, 1, T, T)
        else:
            cos, sin = self._rope_rows(input_pos, x.dtype)                  # (B, 1, T, r)
            window = self.config.sliding_window
            if not causal or (window is not None and T > window):
                S = kv_len if kv_len is not None else self.cache_shape[1]
                slots = torch.arange(S, device=input_ids.device)
                mask = self._window_mask(input_pos, slots[None])[:, None]    # (B, 1, T, S)
        for blk in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(blk, x, cos, sin, mask, input_pos, kv_len, use_reentrant=False)
            else:
                x = blk(x, cos, sin, mask, input_pos, kv_len)
        return self.final_norm(x)
