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

from phi1.model.config import PhiConfig


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (B, H, T, D); pass the rest through."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1)


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
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)      # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)    # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
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


class PhiForCausalLM(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.final_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.activation_checkpointing = False
        self._rope_len = 0
        self._build_rope(config.max_position_embeddings)
        self.reset_parameters()

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
