"""Topic diversity that scales: `phi1 synth topics` trees (resume under kill -9), textbook specs that
sample from a tree or from seed documents with quotas, and the report's coverage and cluster count."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeOpenAI, prompt_of_body
from phi1.cli import main
from phi1.errors import ConfigError, Phi1Error
from phi1.synth.diversity import embedding_clusters, topic_coverage
from phi1.synth.job import JobConfig, run_job
from phi1.synth.prompts import iter_prompts
from phi1.synth.sources import load_tree
from phi1.synth.spec import load_spec
from phi1.synth.topics import TopicsConfig, build_topic_tree, name_key, parse_subtopics, side_paths
from phi1.synth.validate import ValidateConfig, validate_file
from phi1.utils.io import read_jsonl

VOCAB = ("loops lists sets maps trees graphs heaps files tests types errors classes strings bytes dates queues "
         "stacks sorting search parsing regex hashing caching threads async sockets json csv logging closures "
         "generators iterators decorators slicing recursion modules packages typing numbers").split()


def _node(prompt: str) -> str:
    return re.search(r'The current node is "([^"]+)"', prompt).group(1)


def subtopic_answer(body) -> str:
    """Deterministic answers from the prompt, in the formats real models use, with names that repeat
    across the tree (and the node's own name in another case) so that deduplication has work to do."""
    name = _node(prompt_of_body(body))
    h = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    names = [" ".join(VOCAB[(h >> (18 * j + 6 * k)) % len(VOCAB)] for k in range(3)) for j in range(5)]
    names += ["Basics", "ADVANCED topics" if h % 2 else "advanced Topics.", name.upper()]  # repeats everywhere
    style = h % 3
    if style == 0:
        return "```json\n" + json.dumps(names) + "\n```"
    if style == 1:
        return "Here are some subtopics:\n" + "\n".join(f"{i}. **{n.title()}**: what it is" for i, n in enumerate(names, 1))
    return "Sure!\n" + "\n".join(f"- {n} - a short note" for n in names)


def all_names(tree: list[dict], depth: int = 0):
    for node in tree:
        yield node["name"], depth, len(node.get("children") or [])
        yield from all_names(node.get("children") or [], depth + 1)


def topics_args(url: str, out: Path, target: int, *extra) -> list[str]:
    return ["synth", "topics", "--endpoint", url, "--model", "fake-model", "--seeds", "Python,Algorithms,Databases",
            "--target", str(target), "--out", str(out), "--branching", "5", "--timeout", "5", "--base-delay", "0.01",
            *extra]


def grow(url: str, out: Path, target: int, **kw):
    return build_topic_tree(TopicsConfig(url, "fake-model", "Python,Algorithms,Databases", target, str(out),
                                         branching=5, timeout=5, base_delay=0.01, **kw))


def test_parse_subtopics_reads_json_numbered_and_bulleted_lists():
    assert parse_subtopics('Sure:\n```json\n["Lists", "Dicts", "lists"]\n```') == ["Lists", "Dicts"]
    assert parse_subtopics('{"subtopics": [{"name": "Sets"}, "Tuples"]}') == ["Sets", "Tuples"]
    numbered = "Here are the subtopics:\n1. **List comprehensions**: build lists\n2) Generators - lazy\n3. `Slicing`."
    assert parse_subtopics(numbered) == ["List comprehensions", "Generators", "Slicing"]
    assert parse_subtopics("Subtopics:\n* Closures\n• Decorators (wrapping)\n- closures") == ["Closures", "Decorators"]
    assert parse_subtopics("Sorting, Searching; Hashing") == ["Sorting", "Searching", "Hashing"]
    assert parse_subtopics("Sure!\n__slots__ usage\nWeak references") == ["__slots__ usage", "Weak references"]
    assert parse_subtopics("") == []
    assert name_key("  List  Comprehensions. ") == name_key("list comprehensions")


def test_tree_reaches_the_target_with_no_duplicate_and_a_rerun_asks_nothing(tmp_path):
    out = tmp_path / "topics.json"
    with FakeOpenAI(responder=subtopic_answer) as srv:
        rep = grow(srv.url, out, 300, concurrency=4)
        assert rep.reached_target and rep.leaves == 300 and rep.error is None
        data = json.loads(out.read_text())
        tree = load_tree(out)
        assert len(tree.leaves) == data["n_leaves"] == 300
        names = list(all_names(data["tree"]))
        keys = [name_key(n) for n, _, _ in names]
        assert len(keys) == len(set(keys)) == data["n_nodes"]  # no name twice anywhere, case aside
        assert all(d <= 4 and k <= 5 for _, d, k in names)  # depth and branching hold
        ledger = list(read_jsonl(side_paths(out)[1]))
        assert len(ledger) == rep.expanded == len(srv.requests)
        assert len({tuple(r["path"]) for r in ledger}) == len(ledger)
        # each expansion adds at most 4 leaves (5 children, minus the node): little was asked in vain
        assert len(ledger) <= math.ceil((300 - 3) / 4) + 8
        n = len(srv.requests)
        rep2 = grow(srv.url, out, 300, concurrency=4)
        assert len(srv.requests) == n and rep2.expanded == 0 and rep2.expanded_before == len(ledger)
        assert json.loads(out.read_text()) == data
        with pytest.raises(Phi1Error, match="target=300"):
            grow(srv.url, out, 400)


def test_bad_seeds_and_settings_give_one_error_line(tmp_path, capsys):
    (tmp_path / "seeds.csv").write_text("a,b\n")
    (tmp_path / "seeds.yaml").write_text("seeds: [Python, python, SQL]\n")
    for seeds, why in ((str(tmp_path / "missing.txt"), "file not found"), (str(tmp_path / "seeds.csv"), "unsupported"),
                       (" , ", "no subjects")):
        rc = main(["synth", "topics", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--seeds", seeds,
                   "--target", "5", "--out", str(tmp_path / "t.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and why in err[0], err
    rc = main(["synth", "topics", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--seeds", "Python",
               "--target", "5", "--branching", "1", "--out", str(tmp_path / "t.json")])
    assert rc == 2 and "--branching" in capsys.readouterr().err
    from phi1.synth.topics import load_seeds

    assert load_seeds(str(tmp_path / "seeds.yaml")) == ["Python", "SQL"]
    assert load_seeds("Input/Output, CI/CD") == ["Input/Output", "CI/CD"]  # a '/' alone is no path
    assert len(load_seeds(load_spec(None, "textbooks").source)) == 9  # a textbook spec: its inline topics


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "phi1", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_then_rerun_gives_the_same_tree_and_asks_no_node_twice(tmp_path):
    target, first = 120, 12
    ref = tmp_path / "ref.json"
    with FakeOpenAI(responder=subtopic_answer) as srv:
        assert grow(srv.url, ref, target, concurrency=4).reached_target
    out = tmp_path / "topics.json"
    ledger = side_paths(out)[1]
    with FakeOpenAI(responder=subtopic_answer, gate_after=first) as srv:
        proc = _cli(*topics_args(srv.url, out, target, "--concurrency", "4"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ledger.exists() and ledger.read_text().count("\n") >= first and srv.in_flight >= 1:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        else:
            pytest.fail("the topics run never reached the gate")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not out.exists() and len(list(read_jsonl(ledger))) == first
        with ledger.open("a") as fh:
            fh.write('{"path": ["Python", "tor')  # a torn last line: the rerun must cut it off
        srv.gate_after = None
        proc = _cli(*topics_args(srv.url, out, target, "--concurrency", "4"))
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        rep = json.loads(stdout.strip().splitlines()[-1])
        assert rep["expanded_before"] == first and rep["leaves"] == target
        answered = Counter(_node(FakeOpenAI.prompt_of(r)) for r in srv.ok_requests())
    assert set(answered.values()) == {1}  # no node was answered twice over both runs
    paths = [tuple(r["path"]) for r in read_jsonl(ledger)]
    assert len(paths) == len(set(paths)) and Counter(p[-1] for p in paths) == answered
    assert json.loads(out.read_text())["tree"] == json.loads(ref.read_text())["tree"]


def write_tree(path: Path, roots: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """A two-level tree (root -> section -> two leaves each); returns its leaf paths."""
    tree, leaves = [], []
    for root, sections in roots.items():
        kids = []
        for s in sections:
            kids.append({"name": s, "children": [{"name": f"{s} basics"}, {"name": f"{s} in practice"}]})
            leaves += [(root, s, f"{s} basics"), (root, s, f"{s} in practice")]
        tree.append({"name": root, "children": kids})
    path.write_text(json.dumps({"format": "phi1-topic-tree", "version": 1, "tree": tree}))
    return leaves


def textbook_spec(path: Path, **source) -> Path:
    shipped = yaml.safe_load(Path(load_spec(None, "textbooks").source).read_text())
    raw = {k: v for k, v in shipped.items() if k != "topics"} | source
    path.write_text(yaml.safe_dump(raw))
    return path


FAMILIES = {
    "Baking": "preheat oven whisk flour sugar butter eggs knead dough bake bread crust yeast golden".split(),
    "Astronomy": "telescope galaxy orbit planet comet nebula star light gravity moon eclipse spectrum".split(),
    "Sailing": "mast keel rudder harbor tide wind knot anchor sail deck hull compass".split(),
}


def family_textbook(body) -> str:
    """A valid textbook section whose words come from the family of the prompt's root topic."""
    prompt = prompt_of_body(body)
    topic = re.search(r"Topic: ([^.]+)\.", prompt).group(1)
    rng = random.Random(prompt)
    words = lambda n: " ".join(rng.choice(FAMILIES[topic]) for _ in range(n))  # noqa: E731
    return f"{words(60)}.\n\n```python\nitems = {rng.randrange(100)}\nprint(items)\n```\n\n{words(40)}."


def test_textbooks_from_a_tree_keep_the_quota_and_the_report_covers_the_tree(tmp_path):
    leaves = write_tree(tmp_path / "tree.json", {k: [f"{k} tools", f"{k} history"] for k in FAMILIES})
    spec_path = textbook_spec(tmp_path / "tb.yaml", topics_file="tree.json")  # relative to the spec's folder
    spec = load_spec(spec_path, "textbooks")
    n = 30  # 12 leaves: each gets 2 or 3 prompts, never more than ceil(30 / 12)
    prompts = list(iter_prompts(spec, 4, n))
    per_leaf = Counter(tuple(bp.constraints["leaf_path"]) for _, bp, _ in prompts)
    assert set(per_leaf) == set(leaves) and max(per_leaf.values()) <= math.ceil(n / len(leaves))
    assert min(per_leaf.values()) >= n // len(leaves)
    for _, bp, _ in prompts:
        path = bp.constraints["leaf_path"]
        assert f"Topic: {path[0]}. Section: {path[1]}. Teach these concepts: {path[2]}." in bp.messages[-1]["content"]
    assert [h for _, _, h in iter_prompts(spec, 4, 10)] == [h for _, _, h in prompts[:10]]  # pure in (seed, i)
    out = tmp_path / "tb.jsonl"
    with FakeOpenAI(responder=family_textbook) as srv:
        rep = run_job(JobConfig("textbooks", srv.url, "fake", 24, str(out), spec=str(spec_path), seed=4))
    assert rep.complete
    report = validate_file(ValidateConfig("textbooks", str(out), str(tmp_path / "kept.jsonl"), decontaminate=False))
    assert report["counts"]["kept"] == 24
    cov = report["topic_coverage"]  # the tree found through the records' spec
    assert cov["tree_leaves"] == 12 and cov["leaf_coverage"] == 1.0 and cov["max_records_per_leaf"] == 2
    assert cov["topic_coverage"] == 1.0 and cov["distinct_topics"] == 3
    assert report["embedding_clusters"]["clusters"] == 3  # three families of words, three clusters
    assert (tmp_path / "kept.jsonl.report.png").stat().st_size > 10_000
    rc = main(["synth", "validate", "--kind", "textbooks", "--input", str(out), "--out", str(tmp_path / "k2.jsonl"),
               "--no-decontam", "--encoder", "hashing", "--cluster-sample", "6",
               "--topics-file", str(tmp_path / "tree.json")])
    report = json.loads((tmp_path / "k2.jsonl.report.json").read_text())
    assert rc == 0 and report["embedding_clusters"]["sample"] == 6 and report["topic_coverage"]["leaf_coverage"] == 1.0
    # a changed tree is another spec: the job refuses to mix it into the same output
    write_tree(tmp_path / "tree.json", {"Baking": ["Baking tools"]})
    with pytest.raises(Phi1Error, match="spec_sha256"):
        run_job(JobConfig("textbooks", "http://127.0.0.1:9/v1", "fake", 24, str(out), spec=str(spec_path), seed=4))


def test_textbooks_from_seed_documents_hold_one_document_each(tmp_path):
    stage = tmp_path / "kept"
    stage.mkdir()
    docs = {f"doc-{k}": f"def f{k}(x):\n    return x * {k}  # " + "y" * 200 for k in range(5)}
    (stage / "part-0.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs.items()))
    template = "Write a textbook section for {audience}, as {style}, teaching the concepts in this code:\n{document}"
    spec_path = textbook_spec(tmp_path / "web.yaml", seed_documents="kept", document_chars=60, template=template)
    out = tmp_path / "web.jsonl"
    with FakeOpenAI() as srv:
        assert run_job(JobConfig("textbooks", srv.url, "fake", 12, str(out), spec=str(spec_path))).complete
    recs = list(read_jsonl(out))
    used = Counter(r["meta"]["constraints"]["document_id"] for r in recs)
    assert set(used) == set(docs) and max(used.values()) <= math.ceil(12 / 5)
    for r in recs:
        prompt = r["meta"]["prompt"][-1]["content"]
        assert prompt.endswith(docs[r["meta"]["constraints"]["document_id"]][:60])
        assert "y" * 100 not in prompt  # cut to document_chars


def test_a_spec_names_exactly_one_source(tmp_path):
    write_tree(tmp_path / "tree.json", {"Baking": ["Baking tools"]})
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "x = 1"}\n')
    cases = [({"topics_file": "tree.json", "topics": {"A": {"b": ["c"]}}}, "exactly one of"),
             ({}, "exactly one of"),
             ({"seed_documents": "docs.jsonl", "template": "Write for {audience}"}, r"must contain \{document\}"),
             ({"topics_file": "tree.json", "template": "{document}"}, r"does not fill"),
             ({"topics_file": "nowhere.json"}, "topic tree file not found"),
             ({"topics_file": "docs.jsonl"}, "not a topic tree"),
             ({"seed_documents": "docs.jsonl", "template": "{document}", "document_chars": 0}, "document_chars")]
    for i, (source, why) in enumerate(cases):
        path = textbook_spec(tmp_path / f"s{i}.yaml", **source)
        with pytest.raises(Phi1Error, match=why):
            load_spec(path, "textbooks")
    with pytest.raises(ConfigError, match="--encoder"):
        ValidateConfig("textbooks", str(tmp_path / "docs.jsonl"), str(tmp_path / "o.jsonl"), encoder="bogus").validate()


def test_cluster_count_on_planted_data_and_coverage_fraction():
    rng = random.Random(1)
    families = [" ".join(rng.choice(w) for _ in range(80)) for w in FAMILIES.values() for _ in range(40)]
    got = embedding_clusters(families)
    assert got["clusters"] == 3 and got["largest_share"] == pytest.approx(1 / 3, abs=0.01)
    base = "Python lists are ordered collections: append items, index them and loop over them. " * 3
    collapsed = [base + f"Example {i}: x = [{i}, {i + 1}] with {rng.choice(VOCAB)}." for i in range(120)]
    got = embedding_clusters(collapsed, sample=100)
    assert got["clusters"] == 1 and got["largest_share"] == 1.0 and got["sample"] == 100

    class Tree:
        path, leaves = "t.json", [("A", "x"), ("A", "y"), ("B", "z"), ("C", "w")]

    metas = [{"constraints": {"leaf_path": ["A", "x"]}}, {"constraints": {"leaf_path": ["A", "x"]}},
             {"constraints": {"leaf_path": ["B", "z"]}}, {"constraints": {"leaf_path": ["Q", "q"]}}]
    cov = topic_coverage(metas, Tree)
    assert cov["leaf_coverage"] == 0.5 and cov["topic_coverage"] == round(2 / 3, 4)
    assert cov["max_records_per_leaf"] == 2 and cov["leaves_not_in_tree"] == 1
