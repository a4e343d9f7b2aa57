"""Our Phi3ForCausalLM against transformers' Phi3ForCausalLM (the oracle), both directions, fp32."""

from __future__ import annotations

import json

import pytest
import torch

from phi1.model.hf import load_model_dir, save_model_dir
from phi1.model.phi3.network import Phi3ForCausalLM
from phi1.model.phi3.config import Phi3Config

transformers = pytest.importorskip("transformers")

V = 256


def _factors(n: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [round(1.0 + 3.0 * x, 4) for x in torch.rand(n, generator=g).tolist()]


SHAPES = {
    "mha": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
    "gqa": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2),
    "partial-rotary-tied": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=1, partial_rotary_factor=0.75, tie_word_embeddings=True),
    "longrope": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, partial_rotary_factor=0.5, original_max_position_embeddings=32,
                     rope_scaling={"type": "longrope", "short_factor": _factors(4, 1), "long_factor": _factors(4, 2)}),
    "sliding-window": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           sliding_window=16),
}


def random_phi3(shape: dict, seed: int = 0) -> Phi3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Phi3Config(vocab_size=V, max_position_embeddings=128, **{"original_max_position_embeddings": 128, **shape},
                     bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = Phi3ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so a mapping mistake shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def _greedy_ours(model, prompt: torch.Tensor, n: int) -> list[int]:
    from phi1.infer.generate import SamplingParams, generate_ids

    [(tokens, _reason)] = generate_ids(model, [prompt.tolist()], SamplingParams(max_new_tokens=n), eos_id=None)
    return tokens


@pytest.mark.parametrize("name", list(SHAPES))
def test_phi3_parity_both_directions(name, tmp_path):
    model = random_phi3(SHAPES[name])
    save_model_dir(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "phi3"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Phi3ForCausalLM"
    T = 60 if name == "longrope" else 40  # longrope: beyond original_max_position_embeddings (32)
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), hf(x).logits
        short_ours, short_ref = model(x[:, :20]), hf(x[:, :20]).logits
    assert (ours - ref).abs().max().item() < 1e-5, "ours-saved -> transformers logits differ"
    assert (short_ours - short_ref).abs().max().item() < 1e-5, "short-range logits differ"

    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")  # sharded safetensors with an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    back = load_model_dir(tmp_path / "hf").eval()
    with torch.no_grad():
        again = back(x)
    assert (again - ref).abs().max().item() < 1e-5, "transformers-saved -> ours logits differ"

    prompt = x[0, :24 if name == "longrope" else 12]
    n = 16
    with torch.no_grad():
        ref_tokens = hf.generate(prompt[None], max_new_tokens=n, do_sample=False, min_new_tokens=n,
                                 pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert _greedy_ours(back, prompt, n) == ref_tokens, "greedy tokens differ from transformers'"


def test_we_save_sharded_safetensors_that_transformers_loads(tmp_path, tiny_model_dir):
    """Over max_shard_bytes our save writes transformers' shard files and index, for both families; an
    existing directory takes a re-save of the same shards, and is refused where the other layout's
    weights would be loaded instead of ours."""
    from phi1.errors import Phi1Error

    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))
    for name, model in (("phi3", random_phi3(SHAPES["gqa"])), ("phi", load_model_dir(tiny_model_dir).eval())):
        out = tmp_path / name
        save_model_dir(model, out, max_shard_bytes=40_000)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        files = sorted({f for f in index["weight_map"].values()})
        assert len(files) > 2 and not (out / "model.safetensors").exists()
        assert files[0] == f"model-00001-of-{len(files):05d}.safetensors" and all((out / f).exists() for f in files)
        from safetensors.torch import load_file

        tensors = {k: v for f in files for k, v in load_file(str(out / f)).items()}
        assert set(tensors) == set(index["weight_map"])
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        back = load_model_dir(out).eval()
        ids = x[:, :16] % model.config.vocab_size
        with torch.no_grad():
            ours, ref, again = model(ids), hf(ids).logits, back(ids)
        assert (ours - ref).abs().max().item() < 1e-5 and (again - ours).abs().max().item() == 0.0
        save_model_dir(model, out, max_shard_bytes=40_000)  # the same shards: each replaced by name
        assert sorted(p.name for p in out.glob("model-*.safetensors")) == files
        with pytest.raises(Phi1Error, match="would be loaded instead"):  # the index would shadow one file
            save_model_dir(model, out)
        with pytest.raises(Phi1Error, match="naming other shards"):  # another shard count
            save_model_dir(model, out, max_shard_bytes=80_000)
        single = tmp_path / f"{name}-single"
        save_model_dir(model, single)
        with pytest.raises(Phi1Error, match="model.safetensors, which would be loaded instead"):
            save_model_dir(model, single, max_shard_bytes=40_000)
        assert sorted(p.name for p in single.glob("*.safetensors")) == ["model.safetensors"]
    save_model_dir(model, tmp_path / "one")  # under the default limit: one file, as before
    assert (tmp_path / "one" / "model.safetensors").exists()
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()


def test_phi3_loss_and_kv_cache_match_full_forward():
    model = random_phi3(SHAPES["gqa"])
    x = torch.randint(0, V, (3, 24))
    with torch.no_grad():
        full = model(x)
        model.setup_caches(3, 64)
        pre = model(x[:, :16], input_pos=torch.arange(16)[None].expand(3, 16), kv_len=16)
        steps = [model(x[:, t:t + 1], input_pos=torch.full((3, 1), t), kv_len=t + 1) for t in range(16, 24)]
    assert (torch.cat([pre] + steps, dim=1) - full).abs().max().item() < 1e-5


def test_phi3_presets_shapes():
    from phi1.model.family import config_from_preset

    mini = config_from_preset("phi-3-mini")
    assert 3.7e9 < mini.num_parameters() < 3.9e9  # phi-3-mini: 3.8B
    medium = config_from_preset("phi-3-medium")
    assert medium.num_key_value_heads == 10 and 13.5e9 < medium.num_parameters() < 14.5e9  # 14B
    assert config_from_preset("phi-3-mini-128k").longrope
    p4 = config_from_preset("phi-4-mini")
    assert p4.rotary_dim == 96 and p4.tie_word_embeddings
    tiny = config_from_preset("tiny3")
    m = Phi3ForCausalLM(tiny)
    assert m.num_parameters() == tiny.num_parameters()


def test_engine_longrope_switch_matches_generate(tokenizer_dir):
    """The server's engine recomputes a row reaching the long range, as generate() (= transformers) does."""
    from serve_support import Collector

    from phi1.infer.engine import Engine, SeqParams, Sequence
    from phi1.infer.generate import SamplingParams, generate_ids
    from phi1.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    model = random_phi3(SHAPES["longrope"])  # original_max_position_embeddings 32
    with torch.no_grad():  # sharp attention, so keys rotated with the wrong factors change the tokens
        for blk in model.layers:
            blk.attn.qkv_proj.weight.mul_(6)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (20, 29, 32, 40)]
    with torch.no_grad():
        refs = generate_ids(model, prompts, SamplingParams(max_new_tokens=14), tok.eos_id)
    engine = Engine(model, tok, max_batch=4, sync_every=4).start()
    try:
        sinks = []
        for p in prompts:
            sinks.append(Collector())
            engine.submit([Sequence(p, SeqParams(14), sinks[-1])])
        assert all(c.done.wait(60) for c in sinks)
    finally:
        engine.shutdown()
    for (ids, _), c in zip(refs, sinks):
        assert c.text == tok.decode(ids)
