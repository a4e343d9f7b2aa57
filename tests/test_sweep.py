"""TinyStories end to end: `phi1 synth stories` -> `phi1 sweep` (tokenizer, shards, a width x depth grid of
micro models, ending loss, the judge's grades) against the fake judge, and the story readers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from phi1.demo.config import RECIPES

from fake_openai import FakeOpenAI, prompt_of_body
from phi1.errors import Phi1Error
from phi1.demo.sweep import grid, iter_stories, load_sweep_config, split_story


def story_for(prompt: str) -> str:
    """A simple story that uses the prompt's noun, verb and adjective (stories.yaml's template)."""
    verb, noun, adj = (re.search(rf'the {k} "([^"]+)"', prompt).group(1) for k in ("verb", "noun", "adjective"))
    return (f"Once upon a time, there was a {adj} {noun}. The {noun} liked to {verb} every day. "
            f"One day, the {noun} met a little friend. They wanted to {verb} together. "
            f"The friend was {adj} too, and they were very happy. The end.")


def grades(beginning: str) -> tuple[int, int, int]:
    h = hashlib.sha256(beginning.encode()).digest()
    return 1 + h[0] % 10, 1 + h[1] % 10, 1 + h[2] % 10


def responder(body) -> str:
    text = prompt_of_body(body)
    if "<beginning>" not in text:
        return story_for(text)
    g, c, s = grades(text.split("<beginning>\n")[1].split("\n</beginning>")[0])
    return f'Fine.\n{{"grammar": {g}, "creativity": {c}, "consistency": {s}}}'


def phi1(*args, timeout=600):
    env = {**os.environ, "PHI1_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_story_readers_and_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["One day a cat sat. It was happy.", "Tom ran! He fell. \"Ouch,\" he said."]
    pq.write_table(pa.table({"text": texts, "other": [1, 2]}), tmp_path / "train-00000.parquet")
    (tmp_path / "part.json").write_text(json.dumps([{"text": t, "summary": "x"} for t in texts]))
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    assert list(iter_stories([str(tmp_path)])) == texts * 3  # sorted: .jsonl, .json, .parquet by name
    assert split_story(texts[0]) == ("One day a cat sat.", " It was happy.")
    assert split_story("No end here") is None
    pq.write_table(pa.table({"story": texts}), tmp_path / "bad.parquet")
    with pytest.raises(Phi1Error, match="bad.parquet: no `text` column"):
        list(iter_stories([str(tmp_path / "bad.parquet")]))
    paper = load_sweep_config("tinystories.yaml").scales["paper"]
    models = grid(paper, paper.vocab_size, 512)
    assert 0.9e6 <= models[0]["params"] < 1.5e6 and 30e6 < models[-1]["params"] <= 35e6
    assert any(m["depth"] == 1 for m in models) and {m["width"] for m in models} >= {64, 1024}


@pytest.mark.slow
def test_tinystories_end_to_end(tmp_path):
    stories = tmp_path / "stories.jsonl"
    out = tmp_path / "sweep"
    with FakeOpenAI(responder=responder) as srv:
        r = phi1("synth", "stories", "--endpoint", srv.url, "--model", "writer", "--count", 240, "--out", stories)
        assert r.returncode == 0, r.stderr
        r = phi1("sweep", "--stories", stories, "--out", out, "--scale", "toy", "--judge-endpoint", srv.url,
                 "--judge-model", "judge-1")
        assert r.returncode == 0, r.stderr[-3000:]
        graded = sum("<beginning>" in prompt_of_body(q.body) for q in srv.requests)
        result = json.loads((out / "sweep.json").read_text())
        rows = result["models"]
        assert [m["name"] for m in rows] == ["w32-d1", "w32-d2", "w64-d1", "w64-d2"]  # by parameters
        assert all(a["params"] < b["params"] for a, b in zip(rows, rows[1:])) and rows[0]["depth"] == 1
        beginnings = [json.loads(x) for x in (out / "data" / "beginnings.jsonl").read_text().splitlines()]
        assert 0 < len(beginnings) <= 16 and graded == 4 * len(beginnings)
        held = {b["prompt"] + b["ending"] for b in beginnings}
        train_texts = {json.loads(x)["text"] for x in (out / "data" / "train-stories.jsonl").read_text().splitlines()}
        assert not held & train_texts  # the judge's beginnings come from stories no model trained on
        for row in rows:
            for j, key in enumerate(("grammar", "creativity", "consistency")):
                want = sum(grades(b["prompt"])[j] for b in beginnings) / len(beginnings)
                assert row[key] == pytest.approx(want, abs=1e-3), (row["name"], key)
            assert 0 < row["ending_loss"] < 7 and 0 < row["val_loss"] < 7
        assert (out / "sweep.png").stat().st_size > 5000 and "| w64-d2 |" in r.stdout
        # a rerun resumes: nothing is trained or graded again
        before = len(srv.requests)
        r2 = phi1("sweep", "--stories", stories, "--out", out, "--scale", "toy", "--judge-endpoint", srv.url,
                  "--judge-model", "judge-1")
        assert r2.returncode == 0, r2.stderr[-2000:]
        assert len(srv.requests) == before and json.loads((out / "sweep.json").read_text()) == result
        # an edited recipe reruns what the edit touches: a new vocab_size makes a new tokenizer, new shards
        # and new models (and a grid cut to one model reports one)
        marks = {n: json.loads((out / ".stages" / f"{n}.json").read_text())["fingerprint"] for n in ("stories", "tokenizer")}
        text = (RECIPES / "tinystories.yaml").read_text()
        text = text.replace("vocab_size: 512 ", "vocab_size: 384 ").replace("widths: [32, 64] ", "widths: [32] ")
        text = text.replace("depths: [1, 2] ", "depths: [1] ")
        (tmp_path / "edited.yaml").write_text(text)
        r3 = phi1("sweep", "--recipe", tmp_path / "edited.yaml", "--stories", stories, "--out", out, "--scale", "toy",
                  "--judge-endpoint", srv.url, "--judge-model", "judge-1")
        assert r3.returncode == 0, r3.stderr[-2000:]
        now = {n: json.loads((out / ".stages" / f"{n}.json").read_text())["fingerprint"] for n in ("stories", "tokenizer")}
        assert now["stories"] == marks["stories"] and now["tokenizer"] != marks["tokenizer"]
        assert len(json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]) <= 384
        edited = json.loads((out / "sweep.json").read_text())
        assert [m["name"] for m in edited["models"]] == ["w32-d1"] and edited["models"][0]["params"] < rows[0]["params"]
        assert len(srv.requests) == before + len(beginnings)  # the one retrained model graded again
    bad = phi1("sweep", "--stories", tmp_path / "none.jsonl", "--out", tmp_path / "s2")
    assert bad.returncode == 2 and "none.jsonl: not found" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
