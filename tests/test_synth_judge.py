"""`phi1 eval judge`: a tiny real model completes, a fake judge LLM grades, scores get CIs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from fake_openai import FakeOpenAI
from phi1.eval.judge import JudgeConfig, load_items, run_judge
from phi1.eval.rubric import CODE_RUBRIC, STORY_RUBRIC, judge_messages, mean_ci, parse_scores
from phi1.utils.io import read_jsonl

KEYS = STORY_RUBRIC.keys


def test_parse_scores_accepts_what_judges_write():
    assert parse_scores('Nice story.\n{"grammar": 8, "creativity": 6, "consistency": 7}', KEYS) == \
        {"grammar": 8, "creativity": 6, "consistency": 7}
    fenced = 'Reasoning...\n```json\n{"Grammar": "9", "Creativity": 5.5, "Consistency": 4}\n```'
    assert parse_scores(fenced, KEYS) == {"grammar": 9, "creativity": 5.5, "consistency": 4}
    lines = "Grammar: 7/10\n**Creativity**: 3\nconsistency = 10 / 10"
    assert parse_scores(lines, KEYS) == {"grammar": 7, "creativity": 3, "consistency": 10}
    # an earlier example object in the reasoning does not win over the final answer
    two = 'Format is {"grammar": 1, "creativity": 1, "consistency": 1}.\nFinal: {"grammar": 6, "creativity": 6, "consistency": 6}'
    assert parse_scores(two, KEYS) == {"grammar": 6, "creativity": 6, "consistency": 6}
    assert parse_scores('{"grammar": 14, "creativity": 0, "consistency": 5}', KEYS) == {"consistency": 5}
    assert parse_scores("I cannot grade this.", KEYS) == {}
    assert parse_scores('{"correctness": 10, "quality": 8}', CODE_RUBRIC.keys) == {"correctness": 10, "quality": 8}


def test_mean_ci_t_and_bootstrap():
    t = mean_ci([1, 2, 3, 4, 5], "t")
    assert t["mean"] == 3 and t["ci_low"] == pytest.approx(3 - 1.9632, abs=1e-3) and t["ci_high"] == pytest.approx(4.9632, abs=1e-3)
    b = mean_ci([1, 2, 3, 4, 5] * 8, "bootstrap", seed=1)
    assert b == mean_ci([1, 2, 3, 4, 5] * 8, "bootstrap", seed=1)  # seeded: reproducible
    assert 2.4 < b["ci_low"] < 3 < b["ci_high"] < 3.6
    assert mean_ci([], "t")["mean"] is None and mean_ci([7.0], "t")["ci_low"] == 7.0


def test_shipped_prompt_sets():
    problems = load_items("problems")
    assert 20 <= len(problems) <= 25
    for it in problems:
        compile(it["prompt"] + "    pass\n", it["id"], "exec")  # every problem is a valid stub to complete
        assert '"""' in it["prompt"] and it["notes"]
    stories = load_items("stories", n=5)
    assert len(stories) == 5 and all(s["prompt"].endswith((".", "\"", "!")) for s in stories)
    msgs = judge_messages(CODE_RUBRIC, problems[0]["prompt"], "    return ''", problems[0]["notes"])
    assert problems[0]["prompt"] in msgs[1]["content"] and '"correctness"' in msgs[1]["content"]


def grade_for(text: str) -> tuple[int, int, int]:
    h = hashlib.sha256(text.encode()).digest()
    return 1 + h[0] % 10, 1 + h[1] % 10, 1 + h[2] % 10


def story_judge(body) -> str:
    """A deterministic judge: grades from a hash of the beginning, in varying formats."""
    content = body["messages"][-1]["content"]
    beginning = content.split("<beginning>\n")[1].split("\n</beginning>")[0]
    g, c, s = grade_for(beginning)
    style = grade_for(beginning + "style")[0] % 3
    if "his dad went to the park" in beginning:
        return "The continuation is unreadable, I will not grade it."  # a parse failure
    if style == 0:
        return f'Decent.\n{{"grammar": {g}, "creativity": {c}, "consistency": {s}}}'
    if style == 1:
        return f"Some issues.\nGrammar: {g}/10\nCreativity: {c}/10\nConsistency: {s}/10"
    return f'```json\n{{"Grammar": {g}, "Creativity": {c}, "Consistency": {s}}}\n```'


def test_judge_stories_end_to_end_through_the_cli(tiny_model_dir, tmp_path):
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference

    n = 8
    out = tmp_path / "judge"
    with FakeOpenAI(responder=story_judge, faults=["500", "429"], retry_after=0.01) as srv:
        env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "phi1", "eval", "judge", "--model-dir", str(tiny_model_dir), "--task", "stories",
             "--judge-endpoint", srv.url, "--judge-model", "judge-1", "--n", str(n), "--out", str(out),
             "--max-new-tokens", "16", "--device", "cpu"],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert len(srv.requests) == n + 2  # two retried faults
    recs = list(read_jsonl(out / "judged.jsonl"))
    items = load_items("stories", n=n)
    assert [r["id"] for r in sorted(recs, key=lambda r: r["id"])] == [it["id"] for it in items]
    # the completions are the model's own greedy output
    model, tok = load_for_inference(tiny_model_dir, device="cpu")
    expected = generate(model, tok, [it["prompt"] for it in items], max_new_tokens=16, temperature=0.0)
    by_id = {r["id"]: r for r in recs}
    assert [by_id[it["id"]]["completion"] for it in items] == [c.text for c in expected]
    # the judge saw each completion
    seen = [FakeOpenAI.prompt_of(r) for r in srv.ok_requests()]
    assert all(any(by_id[it["id"]]["completion"].strip() in s for s in seen) for it in items)
    summary = json.loads((out / "summary.json").read_text())
    failed = [it for it in items if "his dad went to the park" in it["prompt"]]
    assert summary["parse_failures"] == len(failed) == 1 and summary["graded"] == n
    graded = [it for it in items if it not in failed]
    for j, key in enumerate(KEYS):
        vals = [grade_for(it["prompt"])[j] for it in graded]
        got = summary["scores"][key]
        assert got["bootstrap"]["n"] == n - 1
        assert got["bootstrap"]["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-4)
        assert got["t"]["ci_low"] < got["t"]["mean"] < got["t"]["ci_high"]
        assert got["bootstrap"]["ci_low"] <= got["bootstrap"]["mean"] <= got["bootstrap"]["ci_high"]
    assert "| grammar |" in (out / "summary.md").read_text() and "| grammar |" in proc.stdout


def test_judge_problems_failures_are_retried_on_rerun(tmp_path):
    first = {"on": True}

    def fault_fn(i, body):
        return "400" if first["on"] and "def knight_moves" in body["messages"][-1]["content"] else None

    responder = lambda body: 'Traced the example.\n{"correctness": 3, "quality": 5}'  # noqa: E731
    cfg = JudgeConfig(str(tmp_path), "problems", "", "judge-1", out=str(tmp_path / "j"), base_delay=0.001)
    calls = []

    def gen(prompts):  # the model path is covered above; here the subject is failure and resume
        calls.append(len(prompts))
        return [("    return None\n", "stop")] * len(prompts)

    with FakeOpenAI(responder=responder, fault_fn=fault_fn) as srv:
        cfg.judge_endpoint = srv.url
        s1 = run_judge(cfg, generate_fn=gen)
        n_items = len(load_items("problems"))
        assert s1["judge_failures"] == 1 and s1["failed_ids"] == ["phi1-judge/knight_moves"]
        assert s1["graded"] == n_items - 1
        first["on"] = False
        before = len(srv.requests)
        s2 = run_judge(cfg, generate_fn=gen)
        assert len(srv.requests) - before == 1  # only the missing item is graded again
        assert calls == [n_items, 1]  # and only it is generated again
        assert s2["judge_failures"] == 0 and s2["graded"] == n_items and s2["parse_failures"] == 0
        assert s2["scores"]["correctness"]["t"] == {"n": n_items, "mean": 3.0, "ci_low": 3.0, "ci_high": 3.0, "method": "t"}
        # judge prompts carry the problem and its grading notes
        body = srv.ok_requests()[0].body["messages"][-1]["content"]
        assert "Notes for the grader" in body and "```python\ndef " in body or "```python\nimport" in body


def test_a_judge_that_grades_nothing_is_a_failure(tmp_path):
    """Issue 30 §5: every answer unparsable, or every request failing, is exit 2 naming the reason, with the
    summary still written; not a summary of zero graded items that looks like success."""
    from phi1.errors import Phi1Error

    def gen(prompts):
        return [("    return None\n", "stop")] * len(prompts)

    for responder, faults, want in ((lambda body: "I cannot grade this.", None, "unparsable"),
                                    (None, lambda i, body: "400", "every request to the judge failed")):
        out = tmp_path / want.split()[0]
        cfg = JudgeConfig(str(tmp_path), "problems", "", "judge-1", out=str(out), base_delay=0.001, n=3)
        with FakeOpenAI(responder=responder, fault_fn=faults) as srv:
            cfg.judge_endpoint = srv.url
            with pytest.raises(Phi1Error, match=f"none of the 3 items was graded: .*{want}"):
                run_judge(cfg, generate_fn=gen)
        assert json.loads((out / "summary.json").read_text())["graded"] in (0, 3)


def test_judge_bad_inputs(tmp_path):
    from phi1.errors import ConfigError, Phi1Error

    with pytest.raises(Phi1Error, match="not a directory"):
        run_judge(JudgeConfig(str(tmp_path / "nope"), "stories", "http://127.0.0.1:1/v1", "j"))
    with pytest.raises(ConfigError, match="task"):
        run_judge(JudgeConfig(str(tmp_path), "poems", "http://127.0.0.1:1/v1", "j"))
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(Phi1Error, match="duplicate ids"):
        load_items("stories", str(bad))
