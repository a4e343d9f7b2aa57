"""The phi family's Hugging Face files: config.json and tensor names (`phi1.model.hf` reads and writes
the files).

Saved as transformers' `PhiForCausalLM` (model_type `phi`): the fused `attn.qkv` is split into
`q_proj/k_proj/v_proj` on save and joined on load. Loading also accepts the legacy layouts:
- transformers' `PhiForCausalLM` (microsoft/phi-1, phi-1_5, phi-2);
- the first phi-1 release's `mixformer-sequential` (`layers.0.wte`, `layers.N.mixer.Wqkv`, ...,
  final `layers.L+1.ln/linear`);
- `phi-msft` (`transformer.embd.wte`, `transformer.h.N.*`, `lm_head.ln/linear`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from phi1.errors import Phi1Error
from phi1.model.hfconfig import config_json, first as _first, shape_fields, value as _num
from phi1.model.phi.config import PhiConfig

TRANSFORMERS_VERSION_WRITTEN = "4.45.0"  # the oldest transformers whose Phi reads what we write

# ---------------------------------------------------------------- config.json


def config_to_hf(cfg: PhiConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json for PhiForCausalLM, readable by transformers 4.x and 5.x.

    4.x reads rope_theta/partial_rotary_factor at the top level, 5.x reads the
    nested rope_parameters; both forms are written.
    """
    return config_json(cfg, "PhiForCausalLM", "phi", dtype, TRANSFORMERS_VERSION_WRITTEN,
                       layer_norm_eps=cfg.layer_norm_eps, qk_layernorm=cfg.qk_layernorm,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                                        "partial_rotary_factor": cfg.partial_rotary_factor})


def config_from_hf(d: dict[str, Any]) -> PhiConfig:
    """A PhiConfig from any of the phi config.json dialects (model_type phi, phi-msft,
    mixformer-sequential); a missing required field raises KeyError."""
    mt = d.get("model_type")
    if mt == "phi":
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            rope = {}
        return PhiConfig(
            **shape_fields(d),
            max_position_embeddings=_num(d, "max_position_embeddings", default=2048),
            partial_rotary_factor=float(_num(rope, "partial_rotary_factor",
                                             default=_num(d, "partial_rotary_factor", default=0.5))),
            rope_theta=float(_num(rope, "rope_theta", default=_num(d, "rope_theta", default=10000.0))),
            layer_norm_eps=_num(d, "layer_norm_eps", default=1e-5),
            hidden_act=_num(d, "hidden_act", default="gelu_new"),
            resid_pdrop=_num(d, "resid_pdrop", default=0.0),
            embd_pdrop=_num(d, "embd_pdrop", default=0.0),
            attention_dropout=_num(d, "attention_dropout", default=0.0),
            qk_layernorm=bool(d.get("qk_layernorm", False)),
            initializer_range=_num(d, "initializer_range", default=0.02),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_first(d.get("eos_token_id")),
            pad_token_id=d.get("pad_token_id"),
        )
    if mt in ("mixformer-sequential", "phi-msft"):
        n_embd, n_head = d["n_embd"], d["n_head"]
        return PhiConfig(
            vocab_size=d["vocab_size"],
            hidden_size=n_embd,
            intermediate_size=_num(d, "n_inner", default=4 * n_embd),
            num_hidden_layers=d["n_layer"],
            num_attention_heads=n_head,
            num_key_value_heads=_num(d, "n_head_kv", default=n_head),
            max_position_embeddings=_num(d, "n_positions", default=2048),
            partial_rotary_factor=_num(d, "rotary_dim", default=32) / (n_embd // n_head),
            rope_theta=float(_num(d, "rotary_base", "rope_theta", default=10000.0)),
            layer_norm_eps=_num(d, "layer_norm_epsilon", default=1e-5),
            hidden_act=_num(d, "activation_function", default="gelu_new"),
            resid_pdrop=_num(d, "resid_pdrop", default=0.0),
            embd_pdrop=_num(d, "embd_pdrop", default=0.0),
            attention_dropout=_num(d, "attn_pdrop", default=0.0),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=_first(d.get("eos_token_id")),
        )
    raise Phi1Error(f"model_type {mt!r} is not a phi model; expected 'phi', 'phi-msft' or 'mixformer-sequential'")


# ---------------------------------------------------------------- key layouts

_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_LAYER_MAP = {
    "input_layernorm": "ln",
    "self_attn.dense": "attn.dense",
    "self_attn.q_layernorm": "attn.q_layernorm",
    "self_attn.k_layernorm": "attn.k_layernorm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: PhiConfig) -> dict[str, torch.Tensor]:
    """Our keys -> transformers PhiForCausalLM keys (the fused qkv split into q, k, v)."""
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    out: dict[str, torch.Tensor] = {}
    inv = {v: k for k, v in _HF_LAYER_MAP.items()}
    for key, t in sd.items():
        if key == "embed.weight":
            out["model.embed_tokens.weight"] = t
        elif key.startswith("final_ln."):
            out["model.final_layernorm." + key.split(".", 1)[1]] = t
        elif key.startswith("lm_head."):
            out[key] = t
        elif key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            mod, param = rest.rsplit(".", 1)
            if mod == "attn.qkv":
                q, k, v = t.split([H * D, Hkv * D, Hkv * D], dim=0)
                for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                    out[f"model.layers.{i}.self_attn.{name}.{param}"] = part.contiguous()
            else:
                out[f"model.layers.{i}.{inv[mod]}.{param}"] = t
        else:
            raise KeyError(key)
    return out


def _from_hf_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key == "model.embed_tokens.weight":
            out["embed.weight"] = t
        elif key.startswith("model.final_layernorm."):
            out["final_ln." + key.rsplit(".", 1)[1]] = t
        elif key.startswith("lm_head."):
            out[key] = t
        elif m := _HF_LAYER.match(key):
            i, rest = m.groups()
            mod, param = rest.rsplit(".", 1)
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((i, param), {})[mod[-6]] = t
            elif mod in _HF_LAYER_MAP:
                out[f"layers.{i}.{_HF_LAYER_MAP[mod]}.{param}"] = t
            else:
                out["<unexpected>" + key] = t
        elif "rotary_emb" in key:
            continue  # buffers some versions saved
        else:
            out["<unexpected>" + key] = t
    for (i, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise Phi1Error(f"layer {i}: q/k/v projections incomplete ({sorted(parts)} present)")
        out[f"layers.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


_LEGACY_SUB = {"ln": "ln", "mixer.Wqkv": "attn.qkv", "mixer.out_proj": "attn.dense",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def _from_msft_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        if key == "transformer.embd.wte.weight":
            out["embed.weight"] = t
        elif key.startswith("lm_head.ln."):
            out["final_ln." + key.rsplit(".", 1)[1]] = t
        elif key.startswith("lm_head.linear."):
            out["lm_head." + key.rsplit(".", 1)[1]] = t
        elif m := re.match(r"^transformer\.h\.(\d+)\.(.+)\.(weight|bias)$", key):
            i, mod, param = m.groups()
            out[f"layers.{i}.{_LEGACY_SUB.get(mod, '<unexpected>' + mod)}.{param}"] = t
        elif "rotary_emb" in key or key.endswith("inv_freq"):
            continue
        else:
            out["<unexpected>" + key] = t
    return out


def _from_mixformer_layout(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        m = re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            if "rotary_emb" in key or key.endswith("inv_freq"):
                continue
            out["<unexpected>" + key] = t
            continue
        idx, mod, param = int(m.group(1)), m.group(2), m.group(3)
        if idx == 0 and mod == "wte":
            out["embed.weight"] = t
        elif idx == n_layers + 1 and mod in ("ln", "linear"):
            out[("final_ln." if mod == "ln" else "lm_head.") + param] = t
        elif 1 <= idx <= n_layers:
            out[f"layers.{idx - 1}.{_LEGACY_SUB.get(mod, '<unexpected>' + mod)}.{param}"] = t
        else:
            out["<unexpected>" + key] = t
    return out


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith("model.layers.") or k == "model.embed_tokens.weight" for k in keys):
        return "hf"
    if any(k.startswith("transformer.h.") or k.startswith("transformer.embd.") for k in keys):
        return "phi-msft"
    if any(re.match(r"^layers\.\d+\.(mixer|wte)", k) for k in keys):
        return "mixformer-sequential"
    if any(k.startswith("layers.") and ".attn.qkv." in k for k in keys):
        return "phi1"
    return "unknown"


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: PhiConfig, source: str = "weights") -> dict[str, torch.Tensor]:
    """Any supported layout -> our keys (unknown keys marked `<unexpected>` for the caller's message)."""
    layout = detect_layout(sd.keys())
    if layout == "hf":
        return _from_hf_layout(sd)
    if layout == "phi-msft":
        return _from_msft_layout(sd)
    if layout == "mixformer-sequential":
        return _from_mixformer_layout(sd, cfg.num_hidden_layers)
    if layout == "phi1":
        return dict(sd)
    sample = ", ".join(list(sd)[:5])
    raise Phi1Error(f"{source}: unrecognised weight layout (first keys: {sample})")
