"""Our PhiForCausalLM against transformers' PhiForCausalLM (the numerical oracle), both directions."""

from __future__ import annotations

import pytest
import torch

from phi1.model import PhiConfig, PhiForCausalLM
from phi1.model.hf import load_model_dir, save_model_dir

transformers = pytest.importorskip("transformers")

# Each preset's shape scaled down: same head dim, rotary fraction, and qk-layernorm switch.
SHAPES = {
    "phi-1-like": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                       partial_rotary_factor=0.5),
    "phi-1-small-like": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
                             partial_rotary_factor=0.5),
    "phi-2-like": dict(hidden_size=160, intermediate_size=640, num_hidden_layers=2, num_attention_heads=2,
                       partial_rotary_factor=0.4),
    "qk-layernorm": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                         partial_rotary_factor=0.5, qk_layernorm=True),
    "gqa": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, partial_rotary_factor=0.5),
}


def random_model(shape: dict, vocab: int = 1024, seed: int = 0) -> PhiForCausalLM:
    torch.manual_seed(seed)
    cfg = PhiConfig(vocab_size=vocab, max_position_embeddings=256, **shape)
    model = PhiForCausalLM(cfg).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a mapping mistake shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_both_directions(name, tmp_path, tokenizer_dir):
    from phi1.tokenizer import load_tokenizer

    model = random_model(SHAPES[name])
    save_model_dir(model, tmp_path / "ours", tokenizer=load_tokenizer(tokenizer_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    x = torch.randint(0, 1024, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), hf(x).logits
    assert (ours - ref).abs().max().item() < 1e-4, "ours-saved -> transformers logits differ"

    hf.save_pretrained(tmp_path / "hf")
    back = load_model_dir(tmp_path / "hf").eval()
    with torch.no_grad():
        again = back(x)
    assert (again - ref).abs().max().item() < 1e-4, "transformers-saved -> ours logits differ"


def test_parity_loss_matches_transformers(tmp_path):
    model = random_model(SHAPES["phi-1-like"])
    save_model_dir(model, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    x = torch.randint(0, 1024, (2, 40))
    with torch.no_grad():
        _, loss = model(x[:, :-1], targets=x[:, 1:])
        ref = hf(x, labels=x).loss
    assert abs(loss.item() - ref.item()) < 1e-5


def test_dropout_is_active_only_in_training():
    cfg = PhiConfig.from_preset("micro", resid_pdrop=0.1, embd_pdrop=0.1, attention_dropout=0.1)
    model = PhiForCausalLM(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_kv_cache_matches_full_forward():
    model = random_model(SHAPES["phi-2-like"])
    x = torch.randint(0, 1024, (3, 24))
    with torch.no_grad():
        full = model(x)
        model.setup_caches(3, 64)
        pos = torch.arange(16)[None].expand(3, 16)
        pre = model(x[:, :16], input_pos=pos, kv_len=16)
        steps = [model(x[:, t : t + 1], input_pos=torch.full((3, 1), t), kv_len=t + 1) for t in range(16, 24)]
    inc = torch.cat([pre] + steps, dim=1)
    assert (inc - full).abs().max().item() < 1e-4


def test_preset_parameter_counts():
    counts = {name: PhiConfig.from_preset(name).num_parameters() for name in ("phi-1", "phi-1-small", "phi-2")}
    assert 1.40e9 < counts["phi-1"] < 1.43e9  # paper: 1.3B non-embedding; ~1.42B with embedding and head
    assert 0.34e9 < counts["phi-1-small"] < 0.37e9
    assert 2.7e9 < counts["phi-2"] < 2.8e9
    micro = PhiConfig.from_preset("micro")
    assert PhiForCausalLM(micro).num_parameters() == micro.num_parameters()


def test_flops_per_token_is_six_n_plus_attention():
    cfg = PhiConfig.from_preset("phi-1")
    n = cfg.num_parameters(include_embeddings=False) - cfg.vocab_size + cfg.vocab_size * cfg.hidden_size
    f = cfg.flops_per_token(2048)
    assert f == 6 * n + 12 * cfg.num_hidden_layers * 2048 * cfg.hidden_size
