"""`ModelFamily`: the record that says what a model family is (`phi1.model.family` is the registry)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the config's family, and the key of the registry
    config: type  # the config dataclass (field names as transformers' config.json has them)
    presets: dict  # preset name -> the config's fields
    fixed_vocab: tuple[str, ...]  # presets of released models: their vocab_size is part of the shape
    package: str  # the folder: network.py, hf.py, and gguf.py / probes.py when the family has them
    network_class: str  # the network's class name in network.py
    model_types: tuple[str, ...]  # the config.json model_type values its hf.py reads

    def _module(self, name: str, optional: bool = False):
        try:
            return importlib.import_module(f"{self.package}.{name}")
        except ModuleNotFoundError as exc:
            if optional and exc.name == f"{self.package}.{name}":
                return None
            raise

    def network(self) -> type:
        """The network class (imports torch)."""
        return getattr(self._module("network"), self.network_class)

    def hf(self):
        """The HF adapter: config_to_hf, config_from_hf, to_hf_state_dict, from_hf_state_dict,
        TRANSFORMERS_VERSION_WRITTEN."""
        return self._module("hf")

    def gguf(self):
        """The GGUF mapping (ARCH, check, tensors, hparams), or None."""
        return self._module("gguf", optional=True)

    def probes(self):
        """Where inspection reads the network (attention_probs, mlp_pre, mlp_act), or None."""
        return self._module("probes", optional=True)
