"""The phi3 family in GGUF: llama.cpp's `phi3` architecture (RMSNorm, fused qkv and gate/up, LongRoPE
factors as `rope_factors_*`). Names and shapes as llama.cpp's loader asks for them
(src/llama-model.cpp, LLM_ARCH_PHI3); `phi1.export.gguf_export` writes the file."""

from __future__ import annotations

import numpy as np

ARCH = "phi3"
_NAMES = {"input_norm": "attn_norm", "attn.qkv_proj": "attn_qkv", "attn.o_proj": "attn_output",
          "post_attn_norm": "ffn_norm", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def check(cfg) -> None:
    """llama.cpp's phi3 graph computes every phi3 config phi1 builds."""


def tensors(sd: dict, cfg) -> tuple[dict, list[str]]:
    """Our state dict (numpy arrays) under llama.cpp's names, and notes for the user."""
    t = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["final_norm.weight"],
         "output.weight": sd["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in _NAMES.items():
            t[f"blk.{i}.{theirs}.weight"] = sd[f"layers.{i}.{ours}.weight"]
    if getattr(cfg, "longrope", False):
        for kind in ("long", "short"):
            t[f"rope_factors_{kind}.weight"] = np.asarray(cfg.rope_scaling[f"{kind}_factor"], dtype=np.float32)
    return t, []


def hparams(w, cfg) -> None:
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
    if getattr(cfg, "longrope", False):
        w.add_rope_scaling_attn_factors(float(cfg.rope_attention_factor))
    if cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
