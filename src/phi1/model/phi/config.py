"""The phi family's config (phi-1, phi-1.5, phi-2), with the papers' presets.

Field names follow Hugging Face's `PhiConfig` so that config.json maps 1:1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phi1.model.shape import HeadShape, check_shape


@dataclass
class PhiConfig(HeadShape):
    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = num_attention_heads (plain multi-head attention)
    max_position_embeddings: int = 2048
    partial_rotary_factor: float = 0.5  # rotary on the first 32 of 64 head dims
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"  # GELU, tanh approximation
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    qk_layernorm: bool = False
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    preset: str | None = field(default=None, compare=False)

    # head_dim, rotary_dim and __post_init__ (fill num_key_value_heads, validate): HeadShape

    def validate(self) -> None:
        check_shape(self, ("gelu_new", "gelu_pytorch_tanh", "gelu"))

    # ---- accounting ----------------------------------------------------
    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        d, f, L, V = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        attn = (d * d + d) + 2 * (d * kv + kv) + (d * d + d)
        mlp = (d * f + f) + (f * d + d)
        per_layer = attn + mlp + 2 * d + (4 * self.head_dim if self.qk_layernorm else 0)
        total = L * per_layer + 2 * d  # + final layernorm
        if include_embeddings:
            total += V * d + (0 if self.tie_word_embeddings else V * d) + V
        else:
            total += V  # head bias is not an embedding matrix; counted as compute-side
        return total

    def flops_per_token(self, seq_len: int, *, training: bool = True) -> float:
        """Matmul FLOPs per token (PaLM appendix B accounting).

        Forward = 2 * (non-embedding params + LM head) + attention scores/values
        (2 * 2 * L * T * d, causal halves it but kernels compute both halves on
        most hardware, so we count the full square as MFU conventions do).
        Training = 3 x forward (forward + backward of activations and weights).
        """
        d, L, V = self.hidden_size, self.num_hidden_layers, self.vocab_size
        dense = self.num_parameters(include_embeddings=False) - V + V * d  # layers + head matmul
        fwd = 2 * dense + 4 * L * seq_len * d
        return float(3 * fwd if training else fwd)


# The paper's shapes (phi-1: 24 x 2048, MLP 8192, 32 heads of 64; phi-1-small:
# 20 x 1024, MLP 4096, 16 heads of 64; phi-1.5 = phi-1 shape; phi-2: 32 x 2560,
# 32 heads of 80, rotary dim 32 = 0.4 of the head).
PRESETS: dict[str, dict[str, Any]] = {
    "phi-1": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                  vocab_size=51200, partial_rotary_factor=0.5),
    "phi-1-small": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=16,
                        vocab_size=51200, partial_rotary_factor=0.5),
    "phi-1.5": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                    vocab_size=51200, partial_rotary_factor=0.5),
    "phi-2": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                  vocab_size=51200, partial_rotary_factor=0.4),
    # A few million parameters: CPU tests and the demo. Head dim 64 as in phi-1.
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                 vocab_size=4096, max_position_embeddings=1024, partial_rotary_factor=0.5),
    # Smaller still, for unit tests that run dozens of models.
    "micro": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  vocab_size=512, max_position_embeddings=256, partial_rotary_factor=0.5),
}
PhiConfig.PRESETS = PRESETS

# The presets of released models (microsoft/phi-1, phi-1_5, phi-2 all have 51200 rows): their
# vocab_size is part of the shape. codegen-350M-mono's tokenizer has 50295 tokens, which padding
# to 64 would make 50304; the preset's 51200 wins. tiny and micro are sized to the tokenizer.
FIXED_VOCAB_PRESETS = ("phi-1", "phi-1-small", "phi-1.5", "phi-2")
