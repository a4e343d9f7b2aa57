"""Reading config.json dialects: the helpers every family's HF adapter uses."""

from __future__ import annotations


def value(d: dict, *names: str, default=None):
    """The first of `names` that `d` holds with a value (not None), else `default`."""
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def first(v):
    """A list's first item (transformers writes eos_token_id as one id or a list), else the value."""
    return v[0] if isinstance(v, list) and v else v


SHARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "max_position_embeddings", "hidden_act", "resid_pdrop", "embd_pdrop",
          "attention_dropout", "initializer_range", "tie_word_embeddings", "rope_theta", "partial_rotary_factor",
          "bos_token_id", "eos_token_id", "pad_token_id")  # the config.json fields every family writes as they are


def config_json(cfg, architecture: str, model_type: str, dtype, version: str, **fields) -> dict:
    """A family's config.json: its architecture and model_type, the shared fields, `fields` (its own),
    and the dtype and transformers version written."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {"architectures": [architecture], "model_type": model_type, **{k: getattr(cfg, k) for k in SHARED},
            **fields, "use_cache": True, "dtype": dtype_name, "torch_dtype": dtype_name,
            "transformers_version": version}


def shape_fields(d: dict) -> dict:
    """The shape fields every family's config.json has under transformers' names (KV heads default to
    all heads); a missing required one raises KeyError."""
    heads = d["num_attention_heads"]
    return {"vocab_size": d["vocab_size"], "hidden_size": d["hidden_size"], "intermediate_size": d["intermediate_size"],
            "num_hidden_layers": d["num_hidden_layers"], "num_attention_heads": heads,
            "num_key_value_heads": value(d, "num_key_value_heads", default=heads)}
