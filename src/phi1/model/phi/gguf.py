"""The phi family in GGUF: llama.cpp's `phi2` architecture (parallel attention + MLP from one LayerNorm,
fused `attn_qkv`, NEOX-style partial rotary). Names and shapes as llama.cpp's loader asks for them
(src/llama-model.cpp, LLM_ARCH_PHI2); `phi1.export.gguf_export` writes the file."""

from __future__ import annotations

from phi1.errors import Phi1Error

ARCH = "phi2"
_NAMES = {"ln": "attn_norm", "attn.qkv": "attn_qkv", "attn.dense": "attn_output", "mlp.fc1": "ffn_up",
          "mlp.fc2": "ffn_down"}


def check(cfg) -> None:
    """Refuse what llama.cpp's phi2 graph does not compute."""
    if cfg.qk_layernorm:
        raise Phi1Error("config.json: qk_layernorm=true; llama.cpp's phi2 architecture has no q/k layernorm, so "
                        "this model cannot be exported to GGUF")


def tensors(sd: dict, cfg) -> tuple[dict, list[str]]:
    """Our state dict (numpy arrays) under llama.cpp's names, and notes for the user."""
    notes = []
    if cfg.hidden_act == "gelu":
        notes.append("hidden_act is exact GELU; llama.cpp's phi2 uses the tanh approximation (small logit differences)")
    t = {"token_embd.weight": sd["embed.weight"],
         "output_norm.weight": sd["final_ln.weight"], "output_norm.bias": sd["final_ln.bias"],
         "output.weight": sd["lm_head.weight"], "output.bias": sd["lm_head.bias"]}
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in _NAMES.items():
            for p in ("weight", "bias"):
                t[f"blk.{i}.{theirs}.{p}"] = sd[f"layers.{i}.{ours}.{p}"]
    return t, notes


def hparams(w, cfg) -> None:
    w.add_layer_norm_eps(float(cfg.layer_norm_eps))
