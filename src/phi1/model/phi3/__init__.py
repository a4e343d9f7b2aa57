"""The phi3 family: phi-3-mini, phi-3-mini-128k, phi-3-medium, phi-4-mini (RMSNorm, SwiGLU, GQA,
LongRoPE, sliding window); files are transformers' `Phi3ForCausalLM`."""

from phi1.model.spec import ModelFamily
from phi1.model.phi3.config import FIXED_VOCAB_PRESETS3, PRESETS3, Phi3Config

FAMILY = ModelFamily(name="phi3", config=Phi3Config, presets=PRESETS3, fixed_vocab=FIXED_VOCAB_PRESETS3,
                     package="phi1.model.phi3", network_class="Phi3ForCausalLM", model_types=("phi3",))
