"""`phi1 eval` scores any causal LM that transformers loads, not only phi models: tiny random GPT-2, Llama,
CodeGen and Qwen2 models saved by the test. Samples equal transformers' own greedy generation (cut at the
same stop sequences) and the solution loss equals the cross-entropy transformers' logits give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from phi1.eval.problems import HUMANEVAL_STOP, load_humaneval  # noqa: E402
from phi1.infer.textstream import truncate_at_stop  # noqa: E402

N_PROBLEMS = 3
MAX_NEW = 12


_TRAINED: dict[bool, str] = {}  # one tokenizer per template, trained once per session


def _tokenizer(out: Path, bos: bool) -> None:
    """A small byte-level BPE trained on HumanEval's prompts; with `bos`, a Llama-style template adds <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if bos in _TRAINED:
        (out / "tokenizer.json").write_text(_TRAINED[bos])
        (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                               "bos_token": "<s>" if bos else None}))
        return
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([p.prompt + p.canonical_solution for p in load_humaneval().values()], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    _TRAINED[bos] = tok.to_str()
    _tokenizer(out, bos)


def _config(arch: str, vocab: int):
    small = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=1024, **small)
    if arch == "llama":
        return transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                        **small)
    if arch == "codegen":
        return transformers.CodeGenConfig(n_embd=32, n_layer=2, n_head=2, n_positions=1024, rotary_dim=8,
                                          n_ctx=1024, **small)
    return transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=1024, **small)


def _model_dir(root: Path, arch: str) -> Path:
    out = root / arch
    out.mkdir()
    _tokenizer(out, bos=arch == "llama")
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch, vocab))
    with torch.no_grad():  # random init is near-uniform; sharpen it so greedy decoding is not a tie-break test
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(out)
    return out


def _reference(model_dir: Path, problems):
    """Greedy completions and per-task solution losses computed with transformers directly, one prompt at a time."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    completions, losses = {}, {}
    for p in problems:
        ids = tok.encode(p.prompt, add_special_tokens=True).ids  # AutoTokenizer(prompt): Llama gets its <s>
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, eos_token_id=0)
        new = out[0, len(ids):].tolist()
        new = new[: new.index(0)] if 0 in new else new
        completions[p.task_id] = truncate_at_stop(tok.decode(new), HUMANEVAL_STOP)[0]
        sol = tok.encode(p.canonical_solution, add_special_tokens=False).ids
        full = torch.tensor([ids + sol])
        with torch.no_grad():
            logits = model(full).logits[0, :-1].float()
        tgt = full[0, 1:].clone()
        tgt[: len(ids) - 1] = -100
        nll = F.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum").item()
        losses[p.task_id] = (nll, len(sol))
    return completions, losses


@pytest.mark.parametrize("arch", ["gpt2", "llama", "codegen", "qwen2"])
def test_any_causal_lm_is_scored_like_transformers_computes_it(tmp_path, arch):
    from phi1.eval.benchmark import GenerationConfig, run_benchmark
    from phi1.eval.loss import solution_loss_per_task
    from phi1.eval.sandbox import SandboxConfig
    from phi1.model import load_for_inference

    model_dir = _model_dir(tmp_path, arch)
    problems = list(load_humaneval().values())[:N_PROBLEMS]
    want_text, want_loss = _reference(model_dir, problems)

    gen = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=N_PROBLEMS, max_problems=N_PROBLEMS)
    summary = run_benchmark(model_dir, "humaneval", tmp_path / "out", gen=gen, device="cpu", dtype="float32",
                            sandbox_config=SandboxConfig(workers=1), show_progress=False)
    got = {r["task_id"]: r["completion"] for r in map(json.loads, (tmp_path / "out" / "samples.jsonl").open())}
    assert got == want_text
    assert summary["samples"] == N_PROBLEMS and summary["model"] == str(model_dir)

    model, tok = load_for_inference(model_dir, device="cpu", dtype="float32")
    assert type(model).__name__ == "HFCausalLM" and model.prefix_ids == ([1] if arch == "llama" else [])
    per_task = solution_loss_per_task(model, tok, problems, batch_size=2)
    for tid, (nats, n) in want_loss.items():
        assert per_task[tid][1] == n
        assert per_task[tid][0] == pytest.approx(nats, rel=1e-4)


def test_eval_commands_take_a_llama_directory(tmp_path, monkeypatch, capsys):
    """The CLI (in-process, as `phi1` runs it): `phi1 eval humaneval` and `phi1 eval loss` on a Llama directory."""
    from phi1.cli import main

    monkeypatch.setenv("PHI1_NO_PROGRESS", "1")
    model_dir = _model_dir(tmp_path, "llama")
    rc = main(["eval", "humaneval", "--model", str(model_dir), "--out", str(tmp_path / "he"), "--max-problems", "2",
               "--max-new-tokens", "8", "--device", "cpu", "--workers", "1"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert len((tmp_path / "he" / "samples.jsonl").read_text().splitlines()) == 2
    rc = main(["eval", "loss", "--model", str(model_dir), "--max-problems", "2", "--out", str(tmp_path / "loss.json"),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    result = json.loads((tmp_path / "loss.json").read_text())
    assert result["solution_loss"] > 0 and result["problems"] == 2


def test_the_llm_judge_generates_with_any_causal_lm(tmp_path):
    """`phi1 eval judge`'s completions come from the same generation path."""
    from phi1.eval.judge import CODE_STOPS, JudgeConfig, model_generate_fn
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference

    model_dir = _model_dir(tmp_path, "qwen2")
    cfg = JudgeConfig(model_dir=str(model_dir), task="problems", judge_endpoint="http://127.0.0.1:9", judge_model="x",
                      max_new_tokens=10, device="cpu", dtype="float32")
    prompts = [p.prompt for p in list(load_humaneval().values())[:2]]
    got = model_generate_fn(cfg)(prompts)
    model, tok = load_for_inference(model_dir, device="cpu", dtype="float32")
    want = generate(model, tok, prompts, max_new_tokens=10, stop=list(CODE_STOPS), seed=0)
    assert [t for t, _ in got] == [c.text for c in want] and all(t for t, _ in got)
