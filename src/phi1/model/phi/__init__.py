"""The phi family: phi-1, phi-1-small, phi-1.5, phi-2 (parallel attention + MLP from one LayerNorm,
partial rotary, GELU-tanh, biases everywhere, untied head); files are transformers' `PhiForCausalLM`."""

from phi1.model.spec import ModelFamily
from phi1.model.phi.config import FIXED_VOCAB_PRESETS, PRESETS, PhiConfig

FAMILY = ModelFamily(name="phi", config=PhiConfig, presets=PRESETS, fixed_vocab=FIXED_VOCAB_PRESETS,
                     package="phi1.model.phi", network_class="PhiForCausalLM",
                     model_types=("phi", "phi-msft", "mixformer-sequential"))
