"""Typed configuration for phi-3-style models (transformers' `Phi3Config` field names), with presets.

phi-3 differs from phi-1/2 in the block (RMSNorm, pre-norm attention then MLP, SiLU-gated MLP, no
biases), in grouped-query attention for the larger models, and in LongRoPE: two sets of
per-frequency rescaling factors, `short_factor` up to `original_max_position_embeddings` and
`long_factor` beyond it, with cos/sin scaled by sqrt(1 + ln(s) / ln(L_orig)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from phi1.errors import ConfigError
from phi1.model.shape import HeadShape, check_shape, config_error


@dataclass
class Phi3Config(HeadShape):
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = num_attention_heads
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int = 4096
    partial_rotary_factor: float = 1.0
    rope_theta: float = 10000.0
    # None, or {"type": "longrope", "short_factor": [...], "long_factor": [...]} (+ optional "factor",
    # "attention_factor"); each factor list has rotary_dim / 2 entries.
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 32000
    pad_token_id: int | None = 32000
    preset: str | None = field(default=None, compare=False)

    family = "phi3"  # class attribute, not a field: which network and file format

    # head_dim, rotary_dim and __post_init__: HeadShape (phi1.model.shape)

    @property
    def longrope(self) -> bool:
        return bool(self.rope_scaling) and self.rope_scaling.get("type", self.rope_scaling.get("rope_type")) == "longrope"

    @property
    def rope_attention_factor(self) -> float:
        """The factor cos/sin are multiplied by (LongRoPE's; 1 without scaling)."""
        if not self.longrope:
            return 1.0
        if self.rope_scaling.get("attention_factor") is not None:
            return float(self.rope_scaling["attention_factor"])
        scale = self.rope_scaling.get("factor") or self.max_position_embeddings / self.original_max_position_embeddings
        if scale <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return config_error(self, name, why)

        check_shape(self, ("silu",), ("num_key_value_heads", "original_max_position_embeddings"))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise bad(name, f"must be a token id below vocab_size ({self.vocab_size}) or null")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise bad("sliding_window", "must be a positive integer or null")
        if self.rope_scaling:
            if not isinstance(self.rope_scaling, dict) or not self.longrope:
                raise bad("rope_scaling", "supported: null or a dict with type 'longrope'")
            for key in ("short_factor", "long_factor"):
                f = self.rope_scaling.get(key)
                if not isinstance(f, list) or len(f) != self.rotary_dim // 2 \
                        or not all(isinstance(x, (int, float)) for x in f):
                    raise bad("rope_scaling", f"'{key}' must be a list of {self.rotary_dim // 2} numbers "
                                              "(rotary_dim / 2)")

    # to_dict and replace: HeadShape

    # ---- accounting ----------------------------------------------------
    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        d, f, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        attn = d * (d + 2 * kv) + d * d
        mlp = d * 2 * f + f * d
        total = L * (attn + mlp + 2 * d) + d
        if include_embeddings:
            total += V * d + (0 if self.tie_word_embeddings else V * d)
        return total

    def flops_per_token(self, seq_len: int, *, training: bool = True) -> float:
        """Matmul FLOPs per token, as `PhiConfig.flops_per_token` counts them."""
        d, L, V = self.hidden_size, self.num_hidden_layers, self.vocab_size
        dense = self.num_parameters(include_embeddings=False) + V * d
        fwd = 2 * dense + 4 * L * seq_len * d
        return float(3 * fwd if training else fwd)


def _longrope(rotary_dim: int, long_scale: float) -> dict:
    """LongRoPE factors for a preset: 1 for the short range, a ramp up to `long_scale` for the long one.

    The released checkpoints carry searched factors in their config.json (which loading keeps);
    a freshly initialised model only needs factors of the right shape and a plausible profile.
    """
    n = rotary_dim // 2
    return {"type": "longrope", "short_factor": [1.0] * n,
            "long_factor": [round(1.0 + (long_scale - 1.0) * i / max(n - 1, 1), 4) for i in range(n)]}


# phi-3-mini: 32 x 3072, 32 heads of 96, MLP 8192, Llama-2 tokenizer padded to 32064.
# phi-3-medium: 40 x 5120, 40 heads of 128 with 10 KV heads, MLP 17920.
# phi-4-mini: 32 x 3072, 24 heads of 128 with 8 KV heads, rotary on 3/4 of each head, tied embeddings.
PRESETS3: dict[str, dict[str, Any]] = {
    "phi-3-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                       vocab_size=32064, max_position_embeddings=4096, original_max_position_embeddings=4096,
                       sliding_window=2047),
    "phi-3-mini-128k": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                            vocab_size=32064, max_position_embeddings=131072,
                            original_max_position_embeddings=4096, rope_scaling=_longrope(96, 32.0)),
    "phi-3-medium": dict(hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40,
                         num_key_value_heads=10, vocab_size=32064, max_position_embeddings=4096,
                         original_max_position_embeddings=4096),
    "phi-4-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=24,
                       num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
                       original_max_position_embeddings=4096, partial_rotary_factor=0.75, rope_theta=10000.0,
                       tie_word_embeddings=True, rope_scaling=_longrope(96, 32.0),
                       bos_token_id=199999, eos_token_id=199999, pad_token_id=199999),
    # A few hundred thousand parameters: CPU tests. GQA (4 heads, 2 KV heads) and longrope beyond 128.
    "tiny3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512,
                  original_max_position_embeddings=128, rope_scaling=_longrope(16, 4.0),
                  bos_token_id=None, eos_token_id=None, pad_token_id=None),
}
Phi3Config.PRESETS = PRESETS3

# The released shapes' vocab_size is part of the shape; tiny3 is sized to the tokenizer.
FIXED_VOCAB_PRESETS3 = ("phi-3-mini", "phi-3-mini-128k", "phi-3-medium", "phi-4-mini")
