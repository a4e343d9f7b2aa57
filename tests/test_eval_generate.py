"""Generation + evaluation end to end on a tiny model; resume; solution loss; trainer callback; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import phi1.infer.generate as gen_mod
from phi1.errors import ConfigError
from phi1.eval.benchmark import GenerationConfig, run_benchmark
from phi1.eval.callback import make_eval_callback
from phi1.eval.loss import solution_loss
from phi1.eval.problems import HUMANEVAL_STOP, load_humaneval, load_mbpp, mbpp_prompt
from phi1.eval.sandbox import SandboxConfig
from phi1.model import load_for_inference

from test_eval_mbpp import TASKS


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_inference(tiny_model_dir, device="cpu", dtype="float32")


def _spy(monkeypatch, reply=None, fail_on_call=None):
    """Wrap generate: record prompts/stop; optionally replace the text or fail on the n-th call."""
    calls = []
    real = gen_mod.generate

    def fake(model, tokenizer, prompts, **kw):
        calls.append((list(prompts), kw))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        outs = real(model, tokenizer, prompts, **kw)
        if reply is not None:
            for p, o in zip(prompts, outs):
                o.text = reply(p)
        return outs
    monkeypatch.setattr(gen_mod, "generate", fake)
    return calls


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_humaneval_end_to_end_with_tiny_model(tmp_path, tiny_model_dir, humaneval, monkeypatch):
    calls = _spy(monkeypatch)
    out = tmp_path / "he"
    summary = run_benchmark(tiny_model_dir, "humaneval", out, sandbox_config=SandboxConfig(workers=2),
                            gen=GenerationConfig(max_problems=3, max_new_tokens=8, batch_size=2),
                            device="cpu", dtype="float32", show_progress=False)
    first3 = list(humaneval)[:3]
    assert [p for c in calls for p in c[0]] == [humaneval[t].prompt for t in first3]  # the prompt as given
    assert all(c[1]["stop"] == HUMANEVAL_STOP and c[1]["temperature"] == 0.0 for c in calls)
    samples = _lines(out / "samples.jsonl")
    assert [s["task_id"] for s in samples] == first3
    results = _lines(out / "results.jsonl")
    assert len(results) == 3 and all("kind" in r for r in results)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["pass_at_k"]["pass@1"] == summary["pass_at_k"]["pass@1"] == sum(r["passed"] for r in results) / 3
    assert saved["generation"]["completion_tokens"] > 0
    assert "| pass@1 |" in (out / "summary.md").read_text()


def test_truncation_then_scoring(tmp_path, tiny, humaneval, monkeypatch):
    """A model that writes the right body and then rambles must pass once its completion is cut."""
    model, tok = tiny
    by_prompt = {p.prompt: p for p in humaneval.values()}
    _spy(monkeypatch, reply=lambda prompt: by_prompt[prompt].canonical_solution + "\ndef junk():\n    return 0\n"
         "\nprint(junk())\n")
    summary = run_benchmark(model, "humaneval", tmp_path / "t", tokenizer=tok,
                            gen=GenerationConfig(max_problems=3, max_new_tokens=4, batch_size=3),
                            sandbox_config=SandboxConfig(workers=2), show_progress=False)
    assert summary["pass_at_k"]["pass@1"] == 1.0
    for s in _lines(tmp_path / "t" / "samples.jsonl"):
        assert "junk" not in s["completion"]


def test_interrupted_generation_resumes(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    gen = GenerationConfig(max_problems=3, max_new_tokens=6, batch_size=1)
    _spy(monkeypatch, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(model, "humaneval", tmp_path / "r", tokenizer=tok, gen=gen, show_progress=False)
    assert len(_lines(tmp_path / "r" / "samples.jsonl")) == 2
    calls = _spy(monkeypatch)
    summary = run_benchmark(model, "humaneval", tmp_path / "r", tokenizer=tok, gen=gen,
                            sandbox_config=SandboxConfig(workers=1), show_progress=False)
    assert len(calls) == 1 and summary["generation"]["generated"] == 1
    samples = _lines(tmp_path / "r" / "samples.jsonl")
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert summary["samples"] == 3
    # A third run has nothing left to generate.
    calls = _spy(monkeypatch)
    run_benchmark(model, "humaneval", tmp_path / "r", tokenizer=tok, gen=gen,
                  sandbox_config=SandboxConfig(workers=1), show_progress=False)
    assert calls == []
    # Resuming with other sampling settings would mix two experiments in one file.
    with pytest.raises(ConfigError, match="max_new_tokens: 6 -> 7"):
        run_benchmark(model, "humaneval", tmp_path / "r", tokenizer=tok, show_progress=False,
                      gen=GenerationConfig(max_problems=3, max_new_tokens=7, batch_size=1))


def test_sampling_n_gives_pass_at_k_up_to_n(tmp_path, tiny):
    model, tok = tiny
    summary = run_benchmark(model, "humaneval", tmp_path / "n", tokenizer=tok,
                            gen=GenerationConfig(n=3, temperature=0.8, max_problems=2, max_new_tokens=4),
                            sandbox_config=SandboxConfig(workers=2), show_progress=False)
    assert summary["samples"] == 6 and list(summary["pass_at_k"]) == ["pass@1", "pass@2", "pass@3"]
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(n=2, temperature=0.0).validate()


def test_mbpp_end_to_end(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    calls = _spy(monkeypatch)
    summary = run_benchmark(model, "mbpp", tmp_path / "m", tokenizer=tok, data=data,
                            gen=GenerationConfig(max_problems=2, max_new_tokens=6),
                            sandbox_config=SandboxConfig(workers=2), show_progress=False)
    assert calls[0][0] == [mbpp_prompt(TASKS[1]["text"], TASKS[1]["test_list"][0]),
                           mbpp_prompt(TASKS[2]["text"], TASKS[2]["test_list"][0])]
    assert summary["tasks"] == 2 and summary["benchmark"] == "mbpp"


def test_solution_loss_matches_direct_cross_entropy(tiny, humaneval):
    model, tok = tiny
    p = humaneval["HumanEval/2"]
    prompt, sol = tok.encode(p.prompt), tok.encode(p.canonical_solution)
    ids = torch.tensor([prompt + sol])
    targets = torch.tensor([[-100] * (len(prompt) - 1) + sol + [-100]])  # position t predicts t+1
    with torch.no_grad():
        _, direct = model(ids, targets=targets)
    assert solution_loss(model, tok, [p]) == pytest.approx(direct.item(), rel=1e-5)
    few = list(humaneval.values())[:5]
    assert solution_loss(model, tok, few, batch_size=1) == pytest.approx(solution_loss(model, tok, few, batch_size=4), rel=1e-5)
    model.train()
    solution_loss(model, tok, few[:1])
    assert model.training  # mode restored for the trainer
    model.eval()


def test_eval_callback(tiny):
    model, tok = tiny
    model.train()
    with make_eval_callback("humaneval", max_problems=2, max_new_tokens=6, workers=1) as cb:
        m1 = cb(model, tok)
        m2 = cb(model, tok)  # reuses the started sandbox
    assert model.training
    model.eval()
    assert 0.0 <= m1["pass@1"] <= 1.0 and m1["problems"] == 2
    assert m1["solution_loss"] > 0 and m1 == {**m2, "eval_s": m1["eval_s"]}


def test_cli_humaneval_and_loss(tmp_path, tiny_model_dir, capsys):
    # In-process through the real argument parser: a subprocess per command would
    # pay the full import cost three times (the execute CLI is tested as a subprocess).
    from phi1.cli import main
    rc = main(["eval", "humaneval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
               "--max-problems", "2", "--max-new-tokens", "4", "--workers", "1", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "pass@1" in out.out and (tmp_path / "o" / "summary.md").exists()
    rc = main(["eval", "loss", "--model", str(tiny_model_dir), "--max-problems", "3", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0 and json.loads(out.out.strip().splitlines()[-1])["solution_loss"] > 0
    rc = main(["eval", "mbpp", "--model", str(tiny_model_dir), "--out", str(tmp_path / "m")])
    out = capsys.readouterr()
    assert rc == 2 and "mbpp.jsonl" in out.err and "google-research" in out.err


def test_prompt_longer_than_context_fails_that_task_only(tmp_path, tiny, humaneval):
    from dataclasses import replace
    from phi1.eval.benchmark import generate_samples
    model, tok = tiny
    long_one = replace(humaneval["HumanEval/1"], prompt="# filler\n" * 2000 + humaneval["HumanEval/1"].prompt)
    problems = {"HumanEval/0": humaneval["HumanEval/0"], "HumanEval/1": long_one}
    stats = generate_samples(model, tok, problems, tmp_path / "s.jsonl",
                             GenerationConfig(max_new_tokens=4), show_progress=False)
    rows = _lines(tmp_path / "s.jsonl")
    assert stats["prompt_too_long"] == 1 and stats["generated"] == 1
    assert {r["task_id"]: r["finish_reason"] for r in rows}["HumanEval/1"] == "prompt_too_long"
