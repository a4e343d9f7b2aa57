"""The two model families behind one interface: phi (phi-1, phi-1.5, phi-2) and phi3 (phi-3, phi-4-mini).

A config's `family` attribute says which network builds it and which file format saves it;
everything else (trainer, generation, server, eval) only sees the shared model interface.
"""

from __future__ import annotations

from typing import Any

from phi1.errors import ConfigError
from phi1.model.config import FIXED_VOCAB_PRESETS, PRESETS, PhiConfig
from phi1.model.config import preset_vocab_size as _phi_preset_vocab
from phi1.model.phi3_config import FIXED_VOCAB_PRESETS3, PRESETS3, Phi3Config

ALL_PRESETS: dict[str, dict[str, Any]] = {**PRESETS, **PRESETS3}


def family_of(cfg) -> str:
    return getattr(cfg, "family", "phi")


def config_from_preset(name: str, **overrides: Any):
    """A PhiConfig or Phi3Config from any preset name."""
    if name in PRESETS3:
        return Phi3Config.from_preset(name, **overrides)
    if name in PRESETS:
        return PhiConfig.from_preset(name, **overrides)
    raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(ALL_PRESETS)}")


def preset_vocab_size(name: str, n_tokens: int, where: str = "tokenizer") -> int:
    """The vocab_size a model made from preset `name` gets for a tokenizer of `n_tokens` tokens."""
    if name not in PRESETS3:
        return _phi_preset_vocab(name, n_tokens, where)
    if name not in FIXED_VOCAB_PRESETS3:
        return ((n_tokens + 63) // 64) * 64
    vocab = PRESETS3[name]["vocab_size"]
    if n_tokens > vocab:
        raise ConfigError(f"{where}: {n_tokens} tokens do not fit preset {name!r}'s vocab_size {vocab}; use a "
                          f"tokenizer of at most {vocab} tokens")
    return vocab


def model_class(cfg):
    """The network class for a config."""
    if family_of(cfg) == "phi3":
        from phi1.model.phi3 import Phi3ForCausalLM

        return Phi3ForCausalLM
    from phi1.model.phi import PhiForCausalLM

    return PhiForCausalLM


def build_model(cfg):
    return model_class(cfg)(cfg)


__all__ = ["ALL_PRESETS", "FIXED_VOCAB_PRESETS", "build_model", "config_from_preset", "family_of", "model_class",
           "preset_vocab_size"]
