"""What the model families' configs share: the shape checks, and head and rotary sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

from phi1.errors import ConfigError


def config_error(cfg: Any, name: str, why: str) -> ConfigError:
    return ConfigError(f"model config field '{name}' = {getattr(cfg, name)!r}: {why}")


def check_shape(cfg: Any, activations: tuple[str, ...], more_ints: tuple[str, ...] = ()) -> None:
    """The checks both model families share: sizes, heads, rotary, dropouts, activation."""
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings", *more_ints):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise config_error(cfg, name, "must be a positive integer")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise config_error(cfg, "hidden_size", f"must be divisible by num_attention_heads ({cfg.num_attention_heads})")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise config_error(cfg, "num_key_value_heads", "must divide num_attention_heads")
    if not 0.0 < cfg.partial_rotary_factor <= 1.0:
        raise config_error(cfg, "partial_rotary_factor", "must be in (0, 1]")
    if cfg.rotary_dim % 2:
        raise config_error(cfg, "partial_rotary_factor", f"gives an odd rotary dim {cfg.rotary_dim}; it must be even")
    for name in ("resid_pdrop", "embd_pdrop", "attention_dropout"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise config_error(cfg, name, "must be a probability in [0, 1)")
    if cfg.hidden_act not in activations:
        raise config_error(cfg, "hidden_act", f"supported: {', '.join(activations)}")


class HeadShape:
    """What both model families derive from their fields: head and rotary sizes; KV heads default to all."""

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    PRESETS = {}  # set by each family's config module: preset name -> fields

    @classmethod
    def from_preset(cls, name: str, **overrides: Any):
        """The config of preset `name`, with `overrides`."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides, "preset": name})

    def replace(self, **changes: Any):
        """A copy with `changes` (validated again, by __post_init__)."""
        return dataclasses.replace(self, **changes)
