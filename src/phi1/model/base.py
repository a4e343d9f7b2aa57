"""What every model family's network shares: the static KV cache, rotary helpers, and `CausalLM`, the
interface generation, the server, the trainer and eval use (`hidden_states`, `forward(ids, targets)`,
`setup_caches`, `cache_shape`, `layers[i].attn.kv_cache`, `lm_head`, parameter and FLOP accounting).

A family's network subclasses `CausalLM` and provides `hidden_states` and the attributes it reads:
`config`, `layers[i].attn.{n_kv, head_dim, kv_cache}`, `lm_head`, `embed`, `_rope_len`."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from phi1.model.losses import chunked_cross_entropy


class KVCache(nn.Module):
    """A preallocated (static) key/value cache written at per-sequence positions."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # input_pos: (B, T) absolute positions; k, v: (B, Hkv, T, D)
        # Indexed assignment into the whole buffer (no slice of it first): compiled, this is one in-place
        # index_put_ that writes B*T slots, never a copy of the cache (a scatter_ into self.k[:B] was).
        B = k.shape[0]
        rows = torch.arange(B, device=input_pos.device)[:, None]           # (B, 1)
        self.k[rows, :, input_pos] = k.transpose(1, 2)                      # indexed dims first: (B, T, H, D)
        self.v[rows, :, input_pos] = v.transpose(1, 2)
        return self.k[:B], self.v[:B]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (B, H, T, D); pass the rest through."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1)


def split_heads(qkv: torch.Tensor, H: int, Hkv: int, D: int):
    """q (B, H, T, D), k and v (B, Hkv, T, D) from a fused projection's output (B, T, (H + 2 Hkv) D)."""
    B, T, _ = qkv.shape
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    return (q.view(B, T, H, D).transpose(1, 2), k.view(B, T, Hkv, D).transpose(1, 2),
            v.view(B, T, Hkv, D).transpose(1, 2))


def softmax_scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) under `mask` (bool, True = attend) or the causal one; k's heads are
    repeated for grouped-query attention (query head h reads kv head h // (H / Hkv), as SDPA's GQA)."""
    H, Hkv, T, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)                                               # (B, H, T, T)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class CausalLM(nn.Module):
    """The shared half of a family's network: the embedding, blocks and head, the cache, the logits and
    loss, the accounting. A family's network calls `__init__` with its block class, its final norm (and
    the attribute name its files use for it) and whether its head has a bias, and provides
    `_build_rope`, `reset_parameters` and `hidden_states`."""

    def __init__(self, config, block: type, norm_name: str, norm: nn.Module, head_bias: bool):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(block(config) for _ in range(config.num_hidden_layers))
        setattr(self, norm_name, norm)  # registered here: the state dict keeps the files' order
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=head_bias)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.activation_checkpointing = False
        self._rope_len = 0
        self._build_rope(config.max_position_embeddings)
        self.reset_parameters()

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        """Allocate a static KV cache for incremental decoding."""
        if max_seq_len > self._rope_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the rotary table ({self._rope_len})")
        p = self.lm_head.weight
        dtype = dtype or p.dtype
        device = device or p.device
        for blk in self.layers:
            a = blk.attn
            blk.attn.kv_cache = KVCache(max_batch_size, a.n_kv, max_seq_len, a.head_dim, dtype, device)

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        c = self.layers[0].attn.kv_cache
        return None if c is None else (c.k.shape[0], c.k.shape[2])

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                input_pos: torch.Tensor | None = None, kv_len: int | None = None):
        """Logits (B, T, V); with `targets` (B, T), returns (logits, mean CE loss)."""
        h = self.hidden_states(input_ids, input_pos, kv_len)
        logits = self.lm_head(h)  # (B, T, V)
        if targets is None:
            return logits
        return logits, chunked_cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    # ---- accounting ------------------------------------------------------
    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, *, training: bool = True) -> float:
        return self.config.flops_per_token(seq_len, training=training)
