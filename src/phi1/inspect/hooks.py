"""Forward hooks that read attention probabilities and MLP neuron activations out of a model.

The model's forward path is not touched: a hook on the attention module's *input* recomputes
softmax(QK^T / sqrt(d)) from the module's own weights and the model's own rotary helper, and a
hook on the MLP's first linear applies the MLP's activation to its output. Both run only while
a `Capture` is open, and a `Capture` stops the forward pass as soon as the layers it needs have
been seen, so inspecting layer 0 of a deep model costs one block.

Each model family says where its blocks, attention modules and MLP activations are in its `probes`
module (`phi1.model.<family>.probes`, from the family's record); another network plugs in by
registering an `Adapter` (`register_adapter(ModelClass, adapter)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from phi1.errors import ConfigError, Phi1Error


@dataclass(frozen=True)
class Adapter:
    """Where one architecture keeps what inspection reads.

    - `layers(model)`: the transformer blocks, in order;
    - `attention(block)`: the module whose forward pre-hook sees the attention input;
    - `attention_probs(module, args)`: (B, H, T, S) float32 probabilities from that module's
      positional call arguments;
    - `mlp_pre(block)`: the module whose output is the MLP's pre-activation, and
      `mlp_act(block, pre)`: the neuron activations (B, T, N) from it.
    """

    name: str
    layers: Callable[[nn.Module], list[nn.Module]]
    attention: Callable[[nn.Module], nn.Module]
    attention_probs: Callable[[nn.Module, tuple], torch.Tensor]
    mlp_pre: Callable[[nn.Module], nn.Module]
    mlp_act: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    n_heads: Callable[[nn.Module], int]
    n_neurons: Callable[[nn.Module], int]


_ADAPTERS: list[tuple[type, Adapter]] = []
_FIELDS = ("attention_probs", "mlp_pre", "mlp_act")  # what a family's probes module defines
_DEFAULTS = {"layers": lambda m: list(m.layers), "attention": lambda blk: blk.attn,  # unless it defines them
             "n_heads": lambda m: m.config.num_attention_heads, "n_neurons": lambda m: m.config.intermediate_size}


def register_adapter(model_class: type, adapter: Adapter) -> None:
    """An adapter for a network that is no model family's (a family brings its own: its `probes`)."""
    _ADAPTERS.append((model_class, adapter))


def adapter_for(model: nn.Module) -> Adapter:
    """The registered adapter of the model's class, else its model family's probes
    (`phi1.model.<family>.probes`, found through the family record)."""
    for cls, adapter in _ADAPTERS:
        if isinstance(model, cls):
            return adapter
    from phi1.model.family import families

    for family in families().values():
        if isinstance(model, family.network()) and family.probes() is not None:
            probes = family.probes()
            return Adapter(name=family.name, **{f: getattr(probes, f) for f in _FIELDS},
                           **{f: getattr(probes, f, d) for f, d in _DEFAULTS.items()})
    raise Phi1Error(f"inspection does not know the architecture {type(model).__name__}; it reads phi1's model "
                    "families (" + ", ".join(families()) + "); register an Adapter for others (phi1.inspect.hooks)")


# ---- capture -------------------------------------------------------------------------


class _Enough(Exception):
    """Raised from a hook once every requested layer has been read: the rest of the forward is skipped."""


def resolve_layers(spec: str | Iterable[int] | None, n_layers: int, flag: str = "--layers",
                   default: str = "all") -> list[int]:
    """'all', 'middle', '0,2,-1' or a list of ints -> sorted distinct layer indices (negatives count from the end)."""
    spec = default if spec is None else spec
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_layers))
        if s == "middle":
            return [n_layers // 2]
        try:
            items = [int(p) for p in s.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"{flag} {spec!r}: use 'all', 'middle' or comma-separated layer indices "
                              f"(0..{n_layers - 1}, negatives count from the end)") from None
    else:
        items = [int(i) for i in spec]
    if not items:
        raise ConfigError(f"{flag} {spec!r}: no layer given")
    out = set()
    for i in items:
        if not -n_layers <= i < n_layers:
            raise ConfigError(f"{flag} {i}: out of range; the model has {n_layers} layers (0..{n_layers - 1})")
        out.add(i % n_layers)
    return sorted(out)


class Capture:
    """Hooks for one inspection; `run(ids)` calls `on_attention(layer, probs)` / `on_mlp(layer, acts)`.

    `probs` is (B, H, T, T) float32, `acts` (B, T, N) float32, both for the batch `ids` (B, T).
    Use as a context manager so the hooks are always removed.
    """

    def __init__(self, model: nn.Module, *, attention_layers: Iterable[int] = (), mlp_layers: Iterable[int] = (),
                 on_attention: Callable[[int, torch.Tensor], None] | None = None,
                 on_mlp: Callable[[int, torch.Tensor], None] | None = None):
        self.model = model
        self.adapter = adapter_for(model)
        self.blocks = self.adapter.layers(model)
        self.attention_layers = resolve_layers(list(attention_layers), len(self.blocks)) if attention_layers else []
        self.mlp_layers = resolve_layers(list(mlp_layers), len(self.blocks)) if mlp_layers else []
        self.on_attention, self.on_mlp = on_attention, on_mlp
        self._handles: list = []
        self._pending: set[tuple[str, int]] = set()

    def __enter__(self) -> "Capture":
        for layer in self.attention_layers:
            mod = self.adapter.attention(self.blocks[layer])
            self._handles.append(mod.register_forward_pre_hook(self._attn_hook(layer, mod)))
        for layer in self.mlp_layers:
            blk = self.blocks[layer]
            self._handles.append(self.adapter.mlp_pre(blk).register_forward_hook(self._mlp_hook(layer, blk)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _done(self, what: str, layer: int) -> None:
        self._pending.discard((what, layer))
        if not self._pending:
            raise _Enough

    def _attn_hook(self, layer: int, mod: nn.Module):
        def hook(_module, args):
            if self.on_attention is not None:
                self.on_attention(layer, self.adapter.attention_probs(mod, args))
            self._done("attn", layer)
        return hook

    def _mlp_hook(self, layer: int, blk: nn.Module):
        def hook(_module, _args, output):
            if self.on_mlp is not None:
                self.on_mlp(layer, self.adapter.mlp_act(blk, output))
            self._done("mlp", layer)
        return hook

    @torch.inference_mode()
    def run(self, ids: torch.Tensor) -> None:
        """One forward pass over `ids` (B, T); the hooks fire, the outputs are thrown away."""
        if not self._handles:
            raise RuntimeError("Capture.run outside its `with` block")
        self._pending = {("attn", i) for i in self.attention_layers} | {("mlp", i) for i in self.mlp_layers}
        if not self._pending:
            return
        try:
            self.model(ids)
        except _Enough:
            pass
        if self._pending:  # a hooked module never ran: the adapter points at the wrong place
            raise RuntimeError(f"inspection hooks did not fire for {sorted(self._pending)}")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
