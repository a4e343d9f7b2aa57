"""SFT on chat data: assistant-only loss masks, packing, `phi1 train` with data.format chat, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
import torch.nn.functional as F
from test_train_support import losses, phi1_cmd

from phi1.chat import PHI3_TEMPLATE, ChatTemplate

QUESTIONS = ["Add two numbers.", "Reverse a string.", "Sort a list.", "Square a number.", "Join words."]
ANSWERS = ["def add(a, b):\n    return a + b", "def rev(s):\n    return s[::-1]", "def srt(xs):\n    return sorted(xs)",
           "def sq(x):\n    return x * x", "def join(ws):\n    return ' '.join(ws)"]


def conversations(n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % 5], ANSWERS[i % 5]
        conv = [{"role": "system", "content": "You write Python."}] if i % 2 else []
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            conv += [{"role": "user", "content": "Again, shorter."}, {"role": "assistant", "content": a.split(":")[0]}]
        out.append(conv)
    return out


def write_jsonl(path, convs):
    path.write_text("".join(json.dumps({"messages": c, "id": i}) + "\n" for i, c in enumerate(convs)))
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from phi1.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def test_mask_covers_assistant_content_and_end_marker_only(tok):
    from phi1.data.chat import encode_conversation

    t = ChatTemplate(PHI3_TEMPLATE, eos_token=tok.eos_token)
    conv = conversations(4)[3]
    ids, mask = encode_conversation(tok, t, conv)
    assert tok.decode(ids) == t.render(conv, add_generation_prompt=False)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    want = "".join(m["content"] + "<|end|>" for m in conv if m["role"] == "assistant")
    assert trained == want
    assert mask[0] == 0 and sum(mask) < len(mask)


def test_prompt_tokens_contribute_zero_gradient(tok, tmp_path):
    from phi1.data.chat import ChatSampler
    from phi1.model.family import config_from_preset
    from phi1.model.phi3.network import Phi3ForCausalLM

    data = write_jsonl(tmp_path / "chat.jsonl", conversations(30))
    s = ChatSampler([str(data)], tok, ChatTemplate(PHI3_TEMPLATE, eos_token=tok.eos_token), 48, seed=1)
    x, y = s.batch(range(4))
    assert (y == -100).any() and (y != -100).any()
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config_from_preset("tiny3", vocab_size=1024)).train()
    logits = model(x)
    logits.retain_grad()
    _, loss = model(x, y)
    manual = F.cross_entropy(logits.view(-1, 1024)[(y != -100).view(-1)], y[y != -100])
    assert abs(loss.item() - manual.item()) < 1e-5
    logits2 = model(x)
    logits2.retain_grad()
    F.cross_entropy(logits2.view(-1, 1024), y.view(-1), ignore_index=-100).backward()
    g = logits2.grad.abs().sum(-1)                                   # (B, T)
    assert torch.all(g[y == -100] == 0), "a prompt token's loss reached the gradient"
    assert torch.all(g[y != -100] > 0)
    # The batch is a pure function of the sample index (exact resume, per-rank slicing).
    x2, y2 = s.batch(range(4))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_parquet_messages_column(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from phi1.data.chat import read_conversations

    convs = conversations(6)
    pq.write_table(pa.table({"messages": convs, "source": ["x"] * 6}), tmp_path / "train.parquet")
    assert read_conversations(tmp_path / "train.parquet") == convs


def _sft_raw(run_dir, model_dir, data, steps) -> dict:
    return {
        "run": {"name": run_dir.name, "out_dir": str(run_dir.parent), "seed": 3, "device": "cpu"},
        "model": {"init": str(model_dir)},
        "data": {"format": "chat", "train": [str(data)], "seq_len": 64},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "train": {"micro_batch": 2, "global_batch": 4, "max_steps": steps, "precision": "fp32", "log_interval": 1},
        "eval": {"interval": 0},
        "checkpoint": {"interval": 2, "keep_last_k": 0},
    }


def _sft_config(run_dir, model_dir, data, steps):
    from phi1.train.config import load_config

    return load_config(data=_sft_raw(run_dir, model_dir, data, steps))


def test_train_chat_format_resumes_exactly(tmp_path, tokenizer_dir):
    import subprocess

    from phi1.model.create import init_model_dir
    from phi1.train.trainer import train

    model_dir = init_model_dir("tiny3", tokenizer_dir, tmp_path / "base", seed=0)
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(40))
    train(_sft_config(tmp_path / "ref", model_dir, data, 4))
    train(_sft_config(tmp_path / "split", model_dir, data, 2))
    train(_sft_config(tmp_path / "split", model_dir, data, 4))  # resumes from step 2
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 5))
    assert all(abs(a[k] - b[k]) < 1e-6 for k in a)
    assert a[4] < a[1]  # it learns the answers
    # Bad chat data: one error line naming the file and record, exit status 2.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no messages"}\n')
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_sft_raw(tmp_path / "bad", model_dir, bad, 2)))
    r = subprocess.run(phi1_cmd("train", str(cfg)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "bad.jsonl: record 1: 'messages' must be" in r.stderr


def test_chat_ddp_two_ranks_equal_one_rank(tmp_path, tokenizer_dir):
    """torchrun (gloo, 2 ranks, accumulation 1) reads the same chat windows as 1 rank with accumulation 2."""
    from test_train_support import close, run, torchrun_cmd

    from phi1.model.create import init_model_dir
    from phi1.train.trainer import train

    model_dir = init_model_dir("tiny3", tokenizer_dir, tmp_path / "base", seed=0)
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(40))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(_sft_config(tmp_path / "one", model_dir, data, 3))
    finally:
        torch.set_num_threads(n)
    raw = _sft_raw(tmp_path / "ddp", model_dir, data, 3)
    raw["distributed"] = {"strategy": "ddp"}
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run(torchrun_cmd(2, "train", str(cfg)), timeout=240)
    assert close(losses(tmp_path / "one"), losses(tmp_path / "ddp"))
