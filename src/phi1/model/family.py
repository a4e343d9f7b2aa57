"""Model families, one record each: what a family is lives in its folder (`phi1/model/<family>/`) and
is found through its `ModelFamily` record here (torchtitan's `ModelSpec` is the model).

A family's folder holds `config.py` (its config dataclass and presets), `network.py` (the network, a
`phi1.model.base.CausalLM`), `hf.py` (its Hugging Face files: config.json and tensor names, any legacy
layouts), and optionally `gguf.py` (llama.cpp's architecture, tensor names and hyper-parameters) and
`probes.py` (where inspection reads attention and neurons); its `__init__.py` defines `FAMILY`.
Trainer, generation, server, eval, export and inspection reach a family only through its record.

Adding a family: one folder with those modules and one record, and its name in `FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Any

from phi1.errors import ConfigError, Phi1Error
from phi1.model.spec import ModelFamily

FAMILY_MODULES = ("phi1.model.phi", "phi1.model.phi3")


_families: dict[str, ModelFamily] | None = None


def families() -> dict[str, ModelFamily]:
    global _families
    if _families is None:
        _families = {}
        for mod in FAMILY_MODULES:
            fam = importlib.import_module(mod).FAMILY
            _families[fam.name] = fam
    return dict(_families)


def get(name: str) -> ModelFamily:
    fams = families()
    if name not in fams:
        raise ConfigError(f"model family {name!r}: unknown; the families are {', '.join(fams)}")
    return fams[name]


def family_of(cfg) -> ModelFamily:
    """The family a config belongs to (by its config class)."""
    for fam in families().values():
        if isinstance(cfg, fam.config):
            return fam
    raise Phi1Error(f"{type(cfg).__name__}: not the config of a phi1 model family ({', '.join(families())})")


def for_model_type(model_type, source: str = "config.json") -> ModelFamily:
    """The family whose HF adapter reads config.json's `model_type`."""
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    known = ", ".join(repr(t) for fam in families().values() for t in fam.model_types)
    raise Phi1Error(f"{source}: model_type {model_type!r} is not a phi model; expected one of {known}")


def all_presets() -> dict[str, dict[str, Any]]:
    return {name: p for fam in families().values() for name, p in fam.presets.items()}


def family_of_preset(name: str) -> ModelFamily:
    for fam in families().values():
        if name in fam.presets:
            return fam
    raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(all_presets())}")


def config_from_preset(name: str, **overrides: Any):
    """The config of any family's preset `name`."""
    return family_of_preset(name).config.from_preset(name, **overrides)


def preset_vocab_size(name: str, n_tokens: int, where: str = "tokenizer") -> int:
    """The vocab_size a model made from preset `name` gets for a tokenizer of `n_tokens` tokens: a
    released model's preset keeps its own (and refuses a bigger tokenizer); the others take the
    tokenizer's size padded to a multiple of 64."""
    fam = family_of_preset(name)
    if name not in fam.fixed_vocab:
        return ((n_tokens + 63) // 64) * 64
    vocab = fam.presets[name]["vocab_size"]
    if n_tokens > vocab:
        raise ConfigError(f"{where}: {n_tokens} tokens do not fit preset {name!r}'s vocab_size {vocab}; use a "
                          f"tokenizer of at most {vocab} tokens (the paper's: Salesforce/codegen-350M-mono)")
    return vocab


def model_class(cfg) -> type:
    """The network class for a config."""
    return family_of(cfg).network()


def build_model(cfg):
    return model_class(cfg)(cfg)
