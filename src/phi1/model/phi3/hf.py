"""transformers' `Phi3ForCausalLM` format: config.json and weight names for phi-3 directories.

Our module names are transformers' with shorter prefixes (`embed` for `model.embed_tokens`,
`input_norm` for `input_layernorm`, ...); the fused `qkv_proj` and `gate_up_proj` are fused in
both, so no tensor is split or joined. `phi1.model.hf` calls these for model_type `phi3`
(the phi3 family's record, `phi1.model.phi3`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from phi1.errors import Phi1Error
from phi1.model.hfconfig import config_json, first as _first, shape_fields, value as _num
from phi1.model.phi3.config import Phi3Config

TRANSFORMERS_VERSION_WRITTEN = "4.48.0"  # LongRoPE with partial rotary reads correctly from here on


def config_to_hf(cfg: Phi3Config, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json for Phi3ForCausalLM, readable by transformers 4.x (rope_scaling) and 5.x (rope_parameters)."""
    rope_params = {"rope_type": "default", "rope_theta": cfg.rope_theta,
                   "partial_rotary_factor": cfg.partial_rotary_factor}
    rope_scaling = None
    if cfg.longrope:
        rope_scaling = {k: v for k, v in cfg.rope_scaling.items() if k != "rope_type"}
        rope_scaling["type"] = "longrope"
        rope_params.update({k: v for k, v in rope_scaling.items() if k != "type"}, rope_type="longrope",
                           original_max_position_embeddings=cfg.original_max_position_embeddings)
    return config_json(cfg, "Phi3ForCausalLM", "phi3", dtype, TRANSFORMERS_VERSION_WRITTEN,
                       original_max_position_embeddings=cfg.original_max_position_embeddings,
                       rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window, rope_scaling=rope_scaling,
                       rope_parameters=rope_params)


def config_from_hf(d: dict[str, Any]) -> Phi3Config:
    """A Phi3Config from a phi3 config.json (transformers 4.x `rope_scaling` or 5.x `rope_parameters`)."""
    rope = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
    scaling = d.get("rope_scaling") if isinstance(d.get("rope_scaling"), dict) else None
    kind = (scaling or {}).get("type", (scaling or {}).get("rope_type")) or rope.get("rope_type")
    rope_scaling = None
    if kind in ("longrope", "su", "yarn"):  # "su" and "yarn" are the early names of phi-3's longrope
        src = scaling or rope
        rope_scaling = {"type": "longrope", "short_factor": list(src["short_factor"]),
                        "long_factor": list(src["long_factor"])}
        for k in ("factor", "attention_factor"):
            if src.get(k) is not None:
                rope_scaling[k] = src[k]
    elif kind not in (None, "default"):
        raise Phi1Error(f"rope type {kind!r} is not supported for phi3; supported: default, longrope")
    max_pos = _num(d, "max_position_embeddings", default=4096)
    return Phi3Config(
        **shape_fields(d),
        max_position_embeddings=max_pos,
        original_max_position_embeddings=_num(d, "original_max_position_embeddings",
                                              default=_num(rope, "original_max_position_embeddings", default=max_pos)),
        partial_rotary_factor=float(_num(rope, "partial_rotary_factor",
                                         default=_num(d, "partial_rotary_factor", default=1.0))),
        rope_theta=float(_num(rope, "rope_theta", default=_num(d, "rope_theta", default=10000.0))),
        rope_scaling=rope_scaling,
        rms_norm_eps=_num(d, "rms_norm_eps", default=1e-5),
        hidden_act=_num(d, "hidden_act", default="silu"),
        resid_pdrop=_num(d, "resid_pdrop", default=0.0),
        embd_pdrop=_num(d, "embd_pdrop", default=0.0),
        attention_dropout=_num(d, "attention_dropout", default=0.0),
        sliding_window=d.get("sliding_window"),
        initializer_range=_num(d, "initializer_range", default=0.02),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=_first(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_MAP = {  # transformers' name inside a layer -> ours
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
    "self_attn.qkv_proj": "attn.qkv_proj",
    "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_up_proj": "mlp.gate_up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_LAYER_INV = {v: k for k, v in _LAYER_MAP.items()}


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Phi3Config | None = None) -> dict[str, torch.Tensor]:
    """Our keys -> transformers Phi3ForCausalLM keys."""
    out = {}
    for key, t in sd.items():
        if key == "embed.weight":
            out["model.embed_tokens.weight"] = t
        elif key == "final_norm.weight":
            out["model.norm.weight"] = t
        elif key == "lm_head.weight":
            out[key] = t
        elif key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            mod, param = rest.rsplit(".", 1)
            out[f"model.layers.{i}.{_LAYER_INV[mod]}.{param}"] = t
        else:
            raise KeyError(key)
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: Phi3Config | None = None,
                       source: str = "weights") -> dict[str, torch.Tensor]:
    """transformers Phi3ForCausalLM keys -> ours (unknown keys marked `<unexpected>` for the caller's message)."""
    out = {}
    for key, t in sd.items():
        if key == "model.embed_tokens.weight":
            out["embed.weight"] = t
        elif key == "model.norm.weight":
            out["final_norm.weight"] = t
        elif key == "lm_head.weight":
            out[key] = t
        elif (m := _LAYER.match(key)) and m.group(2).rsplit(".", 1)[0] in _LAYER_MAP:
            mod, param = m.group(2).rsplit(".", 1)
            out[f"layers.{m.group(1)}.{_LAYER_MAP[mod]}.{param}"] = t
        elif "rotary_emb" in key:
            continue
        else:
            out["<unexpected>" + key] = t
    return out
