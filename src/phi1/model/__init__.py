"""The model families (`phi1.model.family`: phi, phi3), their networks and Hugging Face-format model
directories."""

from phi1.model.phi.config import PRESETS, PhiConfig

__all__ = ["PRESETS", "PhiConfig", "PhiForCausalLM", "load_for_inference"]


def load_for_inference(model_dir, device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """Load (model, tokenizer) from a model directory, on the best device, in eval mode; `quantize`
    ("int8" / "int4") makes its linear weights group-wise quantized (phi1.model.quantize)."""
    from phi1.model.hf import load_model_dir
    from phi1.utils.device import resolve_device_dtype
    from phi1.tokenizer import load_tokenizer

    dev, dt = resolve_device_dtype(device, dtype)
    from phi1.model.anylm import is_phi_dir, load_any_causal_lm

    if not is_phi_dir(model_dir):
        # any other causal LM (the paper's baselines): transformers runs it behind phi1's interface
        if quantize:
            from phi1.errors import Phi1Error

            raise Phi1Error(f"--quantize {quantize}: phi1's quantization is for phi models; {model_dir} is not one")
        tok = load_tokenizer(model_dir)
        return load_any_causal_lm(model_dir, tok, device=dev, dtype=dt), tok
    model = load_model_dir(model_dir, device=dev, dtype=dt)
    model.eval()
    if quantize:
        from phi1.model.quantize import quantize_model

        quantize_model(model, quantize)
    tok = load_tokenizer(model_dir)
    return model, tok


def __getattr__(name):
    # torch is imported only when the network is needed, so `phi1 --help` stays fast.
    if name == "PhiForCausalLM":
        from phi1.model.phi.network import PhiForCausalLM

        return PhiForCausalLM
    raise AttributeError(name)
