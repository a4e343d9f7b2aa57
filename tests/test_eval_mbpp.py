"""MBPP: loading the original JSONL format, the bigcode prompt, splits, execution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi1.errors import Phi1Error
from phi1.eval.execute import execute_samples
from phi1.eval.problems import MBPP_STOP, MBPP_URL, load_mbpp, load_problems
from phi1.eval.sandbox import SandboxConfig

TASKS = [
    {"task_id": 2, "text": "Prompt-split task.", "code": "def f():\n    return 1",
     "test_list": ["assert f() == 1"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character from the string.",
     "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
     "test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\"", "assert remove_Occ(\"abcda\",\"a\") == \"bcd\"",
                   "assert remove_Occ(\"PHP\",\"P\") == \"H\""], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
     "code": "def sort_matrix(M):\r\n    result = sorted(M, key=sum)\r\n    return result",
     "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]",
                   "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, 4, -5], [1, -1, 1], [1, 2, 3]]"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function to compute the square root using a helper imported in the setup.",
     "code": "def root(x):\n    return math.sqrt(x)",
     "test_list": ["assert root(16) == 4.0", "assert root(9) == 3.0"], "test_setup_code": "import math",
     "challenge_test_list": []},
    {"task_id": 600, "text": "Validation-split task.", "code": "def g():\n    return 2",
     "test_list": ["assert g() == 2"], "test_setup_code": "", "challenge_test_list": []},
]


@pytest.fixture()
def mbpp_file(tmp_path) -> Path:
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return path


def test_load_test_split_and_prompt_format(mbpp_file):
    problems = load_mbpp(mbpp_file)
    assert list(problems) == ["MBPP/11", "MBPP/12", "MBPP/13"]  # test split is task ids 11-510
    p = problems["MBPP/11"]
    assert p.prompt == ('"""\nWrite a python function to remove first and last occurrence of a given character '
                        'from the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n')
    assert p.test.splitlines() == TASKS[1]["test_list"]
    assert p.stop == MBPP_STOP and "\nassert" in p.stop
    assert list(load_mbpp(mbpp_file, split="validation")) == ["MBPP/600"]
    assert list(load_mbpp(mbpp_file, split="prompt")) == ["MBPP/2"]


def test_missing_or_bad_file_says_where_to_get_it(tmp_path):
    with pytest.raises(Phi1Error, match="google-research"):
        load_problems("mbpp", None)
    with pytest.raises(Phi1Error, match=MBPP_URL.split("/")[-1]):
        load_mbpp(tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 11, "text": "x"}) + "\n")
    with pytest.raises(Phi1Error, match="bad.jsonl:1: MBPP record lacks code, test_list"):
        load_mbpp(bad)


def test_execute_mbpp_canonical_and_broken(tmp_path, mbpp_file):
    rows = []
    for t in TASKS[1:4]:
        rows.append({"task_id": t["task_id"], "completion": t["code"]})          # int ids, as in mbpp.jsonl
        rows.append({"task_id": f"MBPP/{t['task_id']}", "completion": "def nothing():\n    pass\n"})
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = execute_samples(samples, "mbpp", data=mbpp_file, config=SandboxConfig(workers=2), show_progress=False)
    assert [r["passed"] for r in res.records] == [True, False] * 3
    assert {r["kind"] for r in res.records if not r["passed"]} == {"exception"}  # NameError: function missing
    assert res.summary["pass_at_k"]["pass@1"] == pytest.approx(0.5)
