"""Inspection on the phi3 family: its record's probes read attention (GQA, LongRoPE rows, the sliding
window) and the gated MLP's neurons, checked against transformers' Phi3ForCausalLM and against the
network's own forward; `phi1 inspect attention/neurons` and `phi1 compare` run on phi-3 directories."""

from __future__ import annotations

import json

import pytest
import torch

from phi1.cli import main
from test_inspect import code_corpus


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random phi-3 (GQA 4:2, LongRoPE) with a sliding window of 24 tokens."""
    from phi1.model.create import init_model_dir

    out = tmp_path_factory.mktemp("phi3") / "tiny3"
    init_model_dir("tiny3", tokenizer_dir, out, seed=0, sliding_window=24)
    return out


@pytest.fixture(scope="module")
def phi3_local(phi3_dir):
    from phi1.model import load_for_inference

    return load_for_inference(phi3_dir, device="cpu", dtype="float32")


def test_the_phi3_family_brings_its_own_probes(phi3_local):
    from phi1.inspect.hooks import adapter_for

    model, _ = phi3_local
    adapter = adapter_for(model)
    assert adapter.name == "phi3" and adapter.n_heads(model) == 4 and adapter.n_neurons(model) == 128
    assert adapter.mlp_pre(model.layers[0]) is model.layers[0].mlp.gate_up_proj


@pytest.mark.parametrize("length", [16, 40])  # within the sliding window, and past it (the window's mask)
def test_phi3_attention_probs_equal_transformers_eager(phi3_dir, phi3_local, length):
    from transformers import Phi3ForCausalLM as HFPhi3

    from phi1.inspect.hooks import Capture

    model, tok = phi3_local
    ids = tok.encode(code_corpus(2000, seed=3))[:length]
    ids = torch.tensor([ids])
    assert ids.shape[1] == length
    before = model(ids)
    got = {}
    with Capture(model, attention_layers=range(2), on_attention=lambda layer, p: got.__setitem__(layer, p)) as cap:
        cap.run(ids)
    hf = HFPhi3.from_pretrained(phi3_dir, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids, output_attentions=True).attentions
    assert len(ref) == len(got) == 2
    for layer, r in enumerate(ref):
        assert got[layer].shape == r.shape == (1, 4, length, length)
        torch.testing.assert_close(got[layer], r.float(), atol=2e-6, rtol=1e-4)
    if length > 24:  # the window: nothing attends further back than 23 tokens
        assert got[0][0, :, 30, :7].abs().max() == 0
    assert torch.equal(model(ids), before)


def test_phi3_neurons_are_what_down_proj_reads(phi3_local):
    """The probes' neuron activations equal the input of the MLP's down projection in the real forward."""
    from phi1.inspect.hooks import Capture

    model, tok = phi3_local
    ids = torch.tensor([tok.encode(code_corpus(600, seed=4))[:32]])
    seen = {}
    handle = model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    got = {}
    with Capture(model, mlp_layers=[1], on_mlp=lambda layer, a: got.__setitem__(layer, a)) as cap:
        cap.run(ids)
    torch.testing.assert_close(got[1], seen["x"].float(), atol=1e-6, rtol=1e-5)


def test_inspect_and_compare_commands_on_phi3(phi3_dir, tokenizer_dir, tmp_path, capsys):
    from phi1.model.create import init_model_dir

    text = tmp_path / "code.txt"
    text.write_text(code_corpus(4000))
    att = tmp_path / "att"
    assert main(["inspect", "attention", "--model", str(phi3_dir), "--text", str(text), "--out", str(att),
                 "--seq-len", "48", "--device", "cpu", "--dtype", "float32"]) == 0
    heads = json.loads((att / "heads.json").read_text())
    assert len(heads["heads"]) == 2 * 4 and heads["tokens"] > 500

    corpus = tmp_path / "code.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": code_corpus(300, seed=i)}) + "\n" for i in range(8)))
    neu = tmp_path / "neu"
    assert main(["inspect", "neurons", "--model", str(phi3_dir), "--corpus", str(corpus), "--out", str(neu),
                 "--layers", "0", "--top-k", "3", "--device", "cpu"]) == 0
    data = json.loads((neu / "neurons.json").read_text())
    assert len(data["neurons"]["0"]) == 128 and all(len(r["top"]) == 3 for r in data["neurons"]["0"])

    tuned = tmp_path / "tuned3"
    init_model_dir("tiny3", tokenizer_dir, tuned, seed=1)
    out = tmp_path / "cmp"
    assert main(["compare", "--base", str(phi3_dir), "--tuned", str(tuned), "--out", str(out), "--humaneval", "1",
                 "--limit", "1", "--max-new-tokens", "4", "--workers", "1", "--device", "cpu"]) == 0
    rep = json.loads((out / "compare.json").read_text())
    assert [i["set"] for i in rep["items"]] == ["judge", "humaneval", "library"]
    assert all(isinstance(i[side]["completion"], str) for i in rep["items"] for side in ("base", "tuned"))
    capsys.readouterr()
