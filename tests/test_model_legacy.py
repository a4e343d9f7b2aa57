"""Loading the first phi-1 release's layouts (mixformer-sequential, phi-msft) and sharded/.bin weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from phi1.errors import Phi1Error
from phi1.model import PhiConfig, PhiForCausalLM
from phi1.model.hf import load_model_dir, save_model_dir


@pytest.fixture()
def model():
    torch.manual_seed(3)
    cfg = PhiConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=128)
    m = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return m


def legacy_config(cfg: PhiConfig, model_type: str) -> dict:
    return {"model_type": model_type, "n_embd": cfg.hidden_size, "n_layer": cfg.num_hidden_layers,
            "n_head": cfg.num_attention_heads, "n_inner": cfg.intermediate_size, "n_positions": 128,
            "rotary_dim": cfg.rotary_dim, "vocab_size": cfg.vocab_size, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new"}


def msft_state_dict(m: PhiForCausalLM) -> dict:
    sd = {"transformer.embd.wte.weight": m.embed.weight,
          "lm_head.ln.weight": m.final_ln.weight, "lm_head.ln.bias": m.final_ln.bias,
          "lm_head.linear.weight": m.lm_head.weight, "lm_head.linear.bias": m.lm_head.bias}
    for i, b in enumerate(m.layers):
        pre = f"transformer.h.{i}"
        for p in ("weight", "bias"):
            sd[f"{pre}.ln.{p}"] = getattr(b.ln, p)
            sd[f"{pre}.mixer.Wqkv.{p}"] = getattr(b.attn.qkv, p)  # fused q, k, v along the output dim
            sd[f"{pre}.mixer.out_proj.{p}"] = getattr(b.attn.dense, p)
            sd[f"{pre}.mlp.fc1.{p}"] = getattr(b.mlp.fc1, p)
            sd[f"{pre}.mlp.fc2.{p}"] = getattr(b.mlp.fc2, p)
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def mixformer_state_dict(m: PhiForCausalLM) -> dict:
    L = m.config.num_hidden_layers
    out = {}
    for k, v in msft_state_dict(m).items():
        if k == "transformer.embd.wte.weight":
            out["layers.0.wte.weight"] = v
        elif k.startswith("lm_head.ln."):
            out[f"layers.{L + 1}.ln." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("lm_head.linear."):
            out[f"layers.{L + 1}.linear." + k.rsplit(".", 1)[1]] = v
        else:
            i, rest = k.removeprefix("transformer.h.").split(".", 1)
            out[f"layers.{int(i) + 1}.{rest}"] = v
    return out


@pytest.mark.parametrize("layout", ["phi-msft", "mixformer-sequential"])
def test_legacy_layouts_load_with_same_logits(layout, model, tmp_path):
    sd = msft_state_dict(model) if layout == "phi-msft" else mixformer_state_dict(model)
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(legacy_config(model.config, layout)))
    loaded = load_model_dir(tmp_path).eval()
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() < 1e-5


def test_sharded_safetensors_and_bin(model, tmp_path):
    import transformers

    save_model_dir(model, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    x = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        ref = model(x)
        assert (load_model_dir(tmp_path / "sharded").eval()(x) - ref).abs().max() < 1e-5
    # A .bin checkpoint, as older transformers releases wrote.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    torch.save({k: v.clone() for k, v in hf.state_dict().items()}, bin_dir / "pytorch_model.bin")
    with torch.no_grad():
        assert (load_model_dir(bin_dir).eval()(x) - ref).abs().max() < 1e-5


def test_top_level_rope_fields_are_read(model, tmp_path):
    save_model_dir(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["rope_parameters"]
    cfg["partial_rotary_factor"], cfg["rope_theta"] = 0.25, 500.0
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    m = load_model_dir(tmp_path / "m")
    assert m.config.rotary_dim == 16 and m.config.rope_theta == 500.0
    # The nested form wins when both are present (transformers 5 reads that one).
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0, "partial_rotary_factor": 0.5}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    m = load_model_dir(tmp_path / "m")
    assert m.config.rotary_dim == 32 and m.config.rope_theta == 1234.0


def test_shape_mismatch_is_a_clear_error(model, tmp_path):
    save_model_dir(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 512
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Phi1Error, match=r"mlp\.fc1\.weight has shape .* config.json implies"):
        load_model_dir(tmp_path / "m")
