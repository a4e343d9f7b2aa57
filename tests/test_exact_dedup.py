"""The exact-dedup stage (issue 31, part 3): of each group of records with the same normalised text
the first id is kept, whatever the task and hash-range counts; each dropped record names it."""

from __future__ import annotations

import json
from pathlib import Path

from test_dedup_scale import near_dup_corpus


def _run(inp: Path, out: Path, workers: int, **opts) -> tuple[set[str], dict[str, str]]:
    from phi1.data.stages.exact_dedup import run_exact_dedup

    rej = out.with_suffix(".rej.jsonl")
    run_exact_dedup(inp, out, rejected=str(rej), workers=workers, quiet=True, **opts)
    kept = {json.loads(line)["id"] for line in out.read_text().splitlines()}
    dropped = {r["id"]: r["meta"]["duplicate_of"] for r in map(json.loads, rej.read_text().splitlines())}
    assert all(r == "exact_duplicate" for r in (json.loads(x)["meta"]["reject_reason"] for x in rej.read_text().splitlines()))
    return kept, dropped


def _oracle(recs: list[dict], key) -> tuple[set[str], dict[str, str]]:
    first: dict = {}
    for r in sorted(recs, key=lambda r: r["id"]):
        first.setdefault(key(r["text"]), r["id"])
    kept = set(first.values())
    return kept, {r["id"]: first[key(r["text"])] for r in recs if r["id"] not in kept}


def test_first_id_of_each_copy_group_is_kept_whatever_tasks_and_ranges(tmp_path):
    from phi1.data.minhash import normalized_hash

    inp = tmp_path / "in.jsonl"
    recs = near_dup_corpus(inp, 1200, seed=3)
    want = _oracle(recs, normalized_hash)
    assert 100 < len(want[1]) < 600, len(want[1])
    assert _run(inp, tmp_path / "one.jsonl", 1) == want
    assert _run(inp, tmp_path / "many.jsonl", 3, ranges=7) == want
    # input order is kept within each task's shard: one task writes the input order
    assert [json.loads(x)["id"] for x in (tmp_path / "one.jsonl").read_text().splitlines()] == \
        [r["id"] for r in recs if r["id"] in want[0]]


def test_normalize_words_ignores_case_and_spacing_and_none_compares_bytes(tmp_path):
    inp = tmp_path / "in.jsonl"
    texts = {"a": "The cat sat.\n", "b": "the  CAT\tsat.", "c": "The cat sat.  \n", "d": "A dog."}
    inp.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in texts.items()))
    assert _run(inp, tmp_path / "w.jsonl", 1, normalize="words") == ({"a", "d"}, {"b": "a", "c": "a"})
    assert _run(inp, tmp_path / "l.jsonl", 1, normalize="lines") == ({"a", "b", "d"}, {"c": "a"})
    assert _run(inp, tmp_path / "n.jsonl", 2, normalize="none") == (set(texts), {})


def test_cli_names_bad_options(tmp_path, capsys):
    from safety_support import cli, one_error_line

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    for flag, value, says in (("--normalize", "lower", "exact-dedup.normalize: 'lower' must be one of lines, words, none"),
                              ("--ranges", "0", "exact-dedup.ranges: 0 must be a whole number from 1 to 4096")):
        rc, lines = cli(["data", "exact-dedup", inp, "--out", tmp_path / "o.jsonl", flag, value], capsys)
        one_error_line(rc, lines, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
