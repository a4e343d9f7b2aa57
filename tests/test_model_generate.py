"""Incremental decoding: greedy output equals transformers' generate token for token."""

from __future__ import annotations

import pytest
import torch

from phi1.infer.generate import generate
from phi1.model import load_for_inference

transformers = pytest.importorskip("transformers")

PROMPTS = ["def fibonacci(n):\n    ", "import json\n\nclass Encoder:", "x = [1, 2, 3]\nfor"]


def hf_greedy(hf, tok, prompt: str, n: int) -> list[int]:
    ids = tok.encode(prompt)
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                      eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)[0, len(ids):].tolist()
    return out[: out.index(tok.eos_id)] if tok.eos_id in out else out


def test_greedy_equals_transformers(tiny_model_dir):
    model, tok = load_for_inference(tiny_model_dir, device="cpu", dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ours = generate(model, tok, PROMPTS, max_new_tokens=40, batch_size=3)  # batched, different lengths
    for prompt, c in zip(PROMPTS, ours):
        ref = hf_greedy(hf, tok, prompt, 40)
        assert c.token_ids == ref, prompt
        assert c.completion_tokens == len(ref) and c.prompt_tokens == len(tok.encode(prompt))


def test_stop_strings_and_finish_reason(tiny_model_dir):
    model, tok = load_for_inference(tiny_model_dir, device="cpu", dtype="float32")
    [full] = generate(model, tok, [PROMPTS[0]], max_new_tokens=30)
    assert full.finish_reason in ("length", "stop")
    stop = full.text[5:8]
    [cut] = generate(model, tok, [PROMPTS[0]], max_new_tokens=30, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_sampling_is_seeded(tiny_model_dir):
    model, tok = load_for_inference(tiny_model_dir, device="cpu", dtype="float32")
    a = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    b = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    c = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=1.0, seed=8)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_top_k_one_is_greedy():
    from phi1.infer.sampling import sample_next

    logits = torch.randn(4, 100)
    B = logits.size(0)
    out = sample_next(logits, torch.ones(B), torch.ones(B, dtype=torch.long), torch.ones(B))
    assert torch.equal(out, logits.argmax(-1))
    # top_p tiny keeps only the best token too.
    out = sample_next(logits, torch.ones(B), torch.zeros(B, dtype=torch.long), torch.full((B,), 1e-6))
    assert torch.equal(out, logits.argmax(-1))
