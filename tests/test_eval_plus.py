"""evalplus's HumanEval+ / MBPP+ format: base and plus tests from the problem file, outputs compared with the
reference solution's (atol for floats, find_zero by its root), both scores reported. The files cannot be
downloaded here, so the test writes small ones in that format from HumanEval's own tasks."""

from __future__ import annotations

import gzip
import json

import pytest

from phi1.eval.execute import execute_samples
from phi1.eval.problems import load_humaneval, load_problems


def _plus_file(path):
    he = load_humaneval()
    rows = []
    for tid, base, plus, atol in [
        ("HumanEval/0", [[[1.0, 2.0, 3.0], 0.5], [[1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3]],
         [[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.05], 0.1], [[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0], 5.0]], 0),
        ("HumanEval/2", [[3.5], [1.25]], [[123.456], [0.001], [999999.5]], 0),
        ("HumanEval/32", [[[1, 2]], [[-6, 11, -6, 1]]], [[[4, -3, -2, 1]], [[-10, -7, 1, 1]]], 1e-4),
    ]:
        p = he[tid]
        rows.append({"task_id": tid, "prompt": p.prompt, "entry_point": p.entry_point,
                     "canonical_solution": p.canonical_solution, "base_input": base, "plus_input": plus,
                     "atol": atol, "test": p.test, "contract": ""})
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


# has_close_elements that is right only for short lists: passes the base tests, fails the plus ones
SHORT_ONLY = ("    if len(numbers) > 6:\n        return False\n"
              "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")


def test_base_and_plus_scores(tmp_path):
    data = _plus_file(tmp_path / "HumanEvalPlus.jsonl.gz")
    problems = load_problems("humaneval+", data)
    he = load_humaneval()
    rows = [
        {"task_id": "HumanEval/0", "completion": he["HumanEval/0"].canonical_solution},   # base and plus
        {"task_id": "HumanEval/0", "completion": SHORT_ONLY},                              # base only
        {"task_id": "HumanEval/2", "completion": "    return number - int(number)\n"},     # floats within atol
        {"task_id": "HumanEval/2", "completion": "    return round(number % 1.0, 2)\n"},   # base exact, plus off
        {"task_id": "HumanEval/32", "completion": he["HumanEval/32"].canonical_solution},  # judged by its root
        {"task_id": "HumanEval/32", "completion": "    return 0.0\n"},                     # not a root
    ]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = execute_samples(samples, "humaneval+", problems=problems, show_progress=False)
    got = [(r["passed"], r["base_passed"]) for r in res.records]
    assert got == [(True, True), (False, True), (True, True), (False, True), (True, True), (False, False)], \
        [(r["passed"], r.get("base_passed"), r["result"]) for r in res.records]
    s = res.summary
    assert s["passed"] == 3 and s["base"]["passed"] == 5
    assert s["pass_at_k"]["pass@1"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert s["base"]["pass_at_k"]["pass@1"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)


def test_execute_cli_reports_both_scores(tmp_path, monkeypatch, capsys):
    from phi1.cli import main

    monkeypatch.setenv("PHI1_NO_PROGRESS", "1")
    data = _plus_file(tmp_path / "HumanEvalPlus.jsonl.gz")
    he = load_humaneval()
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": SHORT_ONLY}) + "\n"
                       + json.dumps({"task_id": "HumanEval/2", "completion": he["HumanEval/2"].canonical_solution})
                       + "\n")
    rc = main(["eval", "execute", "--benchmark", "humaneval+", "--data", str(data), "--samples", str(samples),
               "--workers", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "base tests only: 2 passed" in out.out and "1 passed base + plus tests" in out.out, out.out
    rc = main(["eval", "execute", "--benchmark", "mbpp+", "--samples", str(samples)])
    err = capsys.readouterr().err
    assert rc == 2 and "evalplus" in err and "--data" in err
