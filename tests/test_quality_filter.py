"""The paper's quality filter: any transformers model as encoder (a tiny CodeGen and a tiny phi, saved
here), two heads, the embedding cache, a judge that survives real LLM answers, and a token budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_openai import FakeOpenAI
from test_data_quality import synthetic_labelled, write
from test_data_stages import read

from phi1.errors import ConfigError, Phi1Error


@pytest.fixture(scope="module")
def codegen_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random CodeGen (the paper's encoder family), saved by transformers, with a tokenizer."""
    import torch
    from transformers import CodeGenConfig, CodeGenForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("codegen")
    cfg = CodeGenConfig(vocab_size=1024, n_positions=256, n_ctx=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                        bos_token_id=0, eos_token_id=0)
    CodeGenForCausalLM(cfg).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def _oracle_mean(model_dir: Path, text: str, max_tokens: int) -> np.ndarray:
    """The mean of transformers' own last hidden states over the text's tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(text)["input_ids"][:max_tokens]
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return h.mean(0).numpy()


@pytest.mark.parametrize("which", ["codegen", "phi"])
def test_hf_encoder_trains_both_heads_and_scores(tmp_path, which, codegen_dir, tiny_model_dir, monkeypatch):
    from phi1.data.classify import run_classify_eval
    from phi1.data.stages.classify import run_classify
    from phi1.data.stages.score import run_score
    from phi1.data.features import EncoderOptions, make_encoder

    model_dir = codegen_dir if which == "codegen" else tiny_model_dir
    spec = f"hf:{model_dir}"
    cache = tmp_path / "emb-cache"
    # The pooled embeddings are transformers' hidden states, whatever the batch and padding.
    texts = ["def f(x):\n    return x + 1\n", "A = 1", "import os\n" * 40]
    enc = make_encoder(spec, EncoderOptions(batch_size=2, max_tokens=64))
    X = enc.encode(texts)
    assert X.shape == (3, enc.hidden_size) and enc.truncated == 1
    for i, t in enumerate(texts):
        np.testing.assert_allclose(X[i], _oracle_mean(model_dir, t, 64), rtol=1e-4, atol=1e-5)
    last = make_encoder(spec, EncoderOptions(pooling="last", batch_size=1)).encode(texts[:2])
    assert not np.allclose(last, X[:2])

    recs = synthetic_labelled(60)
    unique = len({r["text"] for r in recs})  # a repeated text is embedded once
    train = write(tmp_path / "train.jsonl", recs)
    forest = run_classify(train, tmp_path / "forest.joblib", encoder=spec, n_estimators=20, max_tokens=64,
                                embed_cache=str(cache), workers=1, quiet=True)
    assert forest["encoder"]["spec"] == spec and forest["encoder"]["options"] == {"pooling": "mean", "max_tokens": 64}
    assert forest["embeddings"]["encoded"] == unique and forest["embeddings"]["forward_passes"] > 0
    # Another head on the same embeddings: no forward pass at all, every embedding from the cache.
    linear = run_classify(train, tmp_path / "linear.joblib", encoder=spec, head="linear", task="regression",
                                max_tokens=64, embed_cache=str(cache), quiet=True)
    assert linear["head"] == "linear" and linear["embeddings"]["forward_passes"] == 0
    assert linear["embeddings"]["cached"] == 60 and linear["embeddings"]["encoded"] == 0
    for name, meta in (("forest", forest), ("linear", linear)):
        m = run_classify_eval(train, tmp_path / f"{name}.joblib", embed_cache=str(cache), quiet=True)
        assert m["embeddings"]["forward_passes"] == 0
        assert {"precision", "recall", "f1", "confusion"} <= set(m) and sum(map(sum, m["confusion"])) == 60
        assert set(meta["held_out"]) >= {"precision", "recall", "f1", "confusion"}
    assert len(m["confusion_labels"]) == 6  # the regression head also gets the 0-5 matrix
    # Scoring through the CLI (two tasks) with the pooling and length the sidecar recorded.
    out = tmp_path / "scored.jsonl"
    env = {**os.environ, "PHI1_CACHE_DIR": str(tmp_path / "unused")}
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "score", str(train), "--out", str(out),
                        "--classifier", str(tmp_path / "linear.joblib"), "--workers", "2", "--batch-size", "4"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    scores = [rec["meta"]["edu_score"] for rec in read(out)]
    assert len(scores) == 60 and all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 5
    rep = json.loads(Path(str(out) + ".report.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    long = sum(len(tok(r["text"])["input_ids"]) > 64 for r in recs)
    assert rep["details"]["head"] == "linear" and rep["details"]["truncated"] == long > 0  # cut at the trained 64
    with pytest.raises(Phi1Error, match="score with the same encoder"):
        run_score(train, tmp_path / "o.jsonl", classifier=tmp_path / "forest.joblib", encoder="hashing",
                           quiet=True)


def test_roberta_style_encoder_caps_at_its_usable_positions(tmp_path, tokenizer_dir):
    """CodeBERT-style: positions start at padding_idx + 1, so 514 positions hold 512 tokens. A tiny
    random RoBERTa with 66 positions (64 usable) and a tokenizer that states no limit: a long text is
    cut at 64 tokens (transformers' own embeddings of those 64 tokens), not an index error at 66."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from phi1.data.features import EncoderOptions, make_encoder

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=1024, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)
    RobertaModel(cfg).save_pretrained(tmp_path / "roberta")
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, tmp_path / "roberta" / f.name)
    text = "def f(x):\n    return x + 1\n" * 40
    enc = make_encoder(f"hf:{tmp_path / 'roberta'}", EncoderOptions(batch_size=2, max_tokens=512))
    assert enc.max_tokens == 64
    X = enc.encode([text, "A = 1"])
    assert enc.truncated == 1
    np.testing.assert_allclose(X[0], _oracle_mean(tmp_path / "roberta", text, 64), rtol=1e-4, atol=1e-5)
    # the tokenizer's stated limit counts too
    cfg_json = json.loads((tmp_path / "roberta" / "tokenizer_config.json").read_text())
    (tmp_path / "roberta" / "tokenizer_config.json").write_text(json.dumps({**cfg_json, "model_max_length": 40}))
    assert make_encoder(f"hf:{tmp_path / 'roberta'}", EncoderOptions(max_tokens=512)).max_tokens == 40


def test_hf_encoder_errors(tmp_path, monkeypatch):
    from phi1.data.features import EncoderOptions, make_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Phi1Error, match=r"huggingface-cli download Salesforce/codegen-350M-mono --local-dir DIR.*"
                                        r"--encoder hf:DIR"):
        make_encoder("hf:Salesforce/codegen-350M-mono")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Phi1Error, match="has no config.json"):
        make_encoder(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="pooling: 'max' is not one of mean, last"):
        EncoderOptions(pooling="max").validate()


def test_embedding_cache_survives_a_torn_shard(tmp_path, codegen_dir):
    from phi1.data.features import EmbeddingCache, EncoderOptions, embed, make_encoder

    enc = make_encoder(f"hf:{codegen_dir}", EncoderOptions(max_tokens=32))
    texts = [f"def f{i}(x):\n    return x * {i}\n" for i in range(10)]
    X, st = embed(enc, texts, str(tmp_path), chunk=4)
    assert st["encoded"] == 10 and len(list((tmp_path / enc.cache_key()).glob("*.keys.npy"))) == 3
    # A kill between a shard's two files leaves an .emb.npy without keys: it is ignored, not misread.
    (tmp_path / enc.cache_key() / "dead.emb.npy").write_bytes(b"torn")
    before = enc.forward_passes
    X2, st2 = embed(enc, texts + ["x = 1\n"], str(tmp_path))
    assert st2["cached"] == 10 and st2["encoded"] == 1 and enc.forward_passes == before + 1
    np.testing.assert_array_equal(X2[:10], X)
    assert EmbeddingCache(tmp_path, "other-encoder").get(["k"]) == {}


# ---- the judge ----------------------------------------------------------------------------------

ANSWERS = {  # record id -> what the judge answers (the label the parse must give)
    "json": ('{"score": 4, "reason": "clear"}', 4.0),
    "fenced": ('```json\n{"score": 2, "reason": "glue"}\n```', 2.0),
    "colon": ("Score: 3\nIt shows loops.", 3.0),
    "slash": ("I would say 4/5.", 4.0),
    "outof": ("This deserves 1 out of 5.", 1.0),
    "think": ("<think>Is it 1? The score could be 0.</think>\nFinal answer: 5/5", 5.0),
    "garbage": ("I refuse to grade this.", None),
}


def _judge_text(body) -> str:
    msgs = body["messages"]
    first = msgs[0]["content"]
    rid = next(k for k in ANSWERS if f"# RECORD {k}\n" in first)
    if len(msgs) > 1 and rid != "garbage":  # the retry
        return '{"score": 0, "reason": "asked twice"}'
    return ANSWERS[rid][0]


def _judge_records():
    return [{"id": k, "text": f"# RECORD {k}\ndef f():\n    return {i}\n", "meta": {}} for i, k in enumerate(ANSWERS)]


def test_judge_parses_real_answers_retries_once_and_counts(tmp_path):
    from phi1.data.stages.annotate import run_annotate

    inp = write(tmp_path / "in.jsonl", _judge_records())
    with FakeOpenAI(responder=_judge_text) as srv:
        rep = run_annotate(inp, tmp_path / "out.jsonl", endpoint=srv.url, model="judge", temperature=0.6,
                           max_tokens=4000, sampling={"seed": 7}, price_in_per_1m=2.0, price_out_per_1m=8.0,
                           workers=1, quiet=True)
        got = {r["id"]: r["meta"] for r in read(tmp_path / "out.jsonl")}
        for rid, (_, want) in ANSWERS.items():
            if want is None:
                assert "edu_label" not in got[rid] and "unparsable" in got[rid]["edu_error"]
            else:
                assert got[rid]["edu_label"] == want, rid
        # Garbage is asked once more (its answer shown back), then counted: never a silent 0.
        asked = [r for r in srv.requests if "# RECORD garbage" in json.dumps(r.body)]
        assert len(asked) == 2 and asked[1].body["messages"][1] == {"role": "assistant",
                                                                    "content": ANSWERS["garbage"][0]}
        d = rep.details
        assert d["judge_retried"] == 1 and d["judge_unparsable"] == 1 and d["judge_failed"] == 0
        # The sampling settings are the config's, and the JSON schema is asked for.
        body = srv.requests[0].body
        assert body["temperature"] == 0.6 and body["max_tokens"] == 4000 and body["seed"] == 7
        assert body["response_format"]["json_schema"]["schema"]["properties"]["score"]["maximum"] == 5
        tin = sum(len(json.dumps(r.body["messages"][-1]["content"]).split()) for r in srv.requests)
        assert d["tokens_in"] > 0 and d["tokens_out"] > 0 and tin > 0
        want_cost = d["tokens_in"] / 1e6 * 2.0 + d["tokens_out"] / 1e6 * 8.0
        assert d["cost_usd"] == pytest.approx(want_cost, rel=1e-3)
        assert d["cost_per_1000_labels"] == pytest.approx(want_cost / 6 * 1000, rel=1e-3)  # 6 labelled


def test_judge_on_a_ten_point_scale_and_a_server_without_json_schema(tmp_path):
    from phi1.data.stages.annotate import run_annotate

    recs = [{"id": f"r{i}", "text": f"def f{i}():\n    return {i}\n", "meta": {}} for i in range(4)]
    answers = ["8", "Score: 10", "3/5", "7 out of 10"]

    def text(body):
        i = int(body["messages"][0]["content"].split("def f", 1)[1].split("(", 1)[0])
        return answers[i]

    def refuse_schema(index, body):
        return "400" if "response_format" in body else None

    with FakeOpenAI(responder=text, fault_fn=refuse_schema) as srv:
        rep = run_annotate(write(tmp_path / "in.jsonl", recs), tmp_path / "out.jsonl", endpoint=srv.url,
                           model="judge", scale=10, concurrency=1, workers=1, quiet=True)
        got = {r["id"]: r["meta"]["edu_label"] for r in read(tmp_path / "out.jsonl")}
        assert got == {"r0": 4.0, "r1": 5.0, "r2": 3.0, "r3": 3.5}
        assert "from 0 to 10" in srv.requests[0].body["messages"][0]["content"]
        # Refused, then asked as plain chat: once a refusal is back, later requests go without the schema.
        assert rep.details["schema_refused"] == 1 and rep.details["judge_failed"] == 0
        refused = [r for r in srv.requests if "response_format" in r.body]
        assert all(r.status == 400 for r in refused) and len(srv.requests) == len(recs) + len(refused)


def test_sample_without_a_judge_is_an_error_unless_rules_are_asked_for(tmp_path):
    inp = write(tmp_path / "in.jsonl", synthetic_labelled(12))
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "annotate", str(inp), "--out", str(tmp_path / "o.jsonl"),
                        "--sample", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--annotator rules" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "annotate", str(inp), "--out", str(tmp_path / "o.jsonl"),
                        "--sample", "5", "--annotator", "rules", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(read(tmp_path / "o.jsonl")) == 5
    env = {k: v for k, v in os.environ.items() if k != "PHI1_TEST_KEY"}
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "annotate", str(inp), "--out", str(tmp_path / "k.jsonl"),
                        "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "PHI1_TEST_KEY"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "PHI1_TEST_KEY is not set" in r.stderr


def test_demo_endpoint_drives_annotation(tmp_path):
    from phi1.demo.config import load_demo_config
    from phi1.demo.layout import Layout
    from phi1.demo.pipeline import data_pipeline

    cfg = load_demo_config("demo-tiny.yaml")
    L = Layout(tmp_path)
    def annotate(**kw):
        return next(s for s in data_pipeline(cfg, L, **kw)["stages"] if s["name"] == "annotate")

    ann = annotate(endpoint="http://127.0.0.1:8000/v1", model="judge", api_key_env="KEY")
    assert ann["endpoint"] == "http://127.0.0.1:8000/v1" and ann["model"] == "judge" and ann["api_key_env"] == "KEY"
    assert "endpoint" not in annotate()
    cfg.data.annotate.annotator = "rules"
    assert "endpoint" not in annotate(endpoint="http://x/v1")
    paper = load_demo_config("phi-1.yaml").data
    assert paper.classify.encoder == "hf:Salesforce/codegen-350M-mono" and paper.annotate.api_key_env == "OPENAI_API_KEY"
    assert paper.filter.keep_tokens == 6_000_000_000


# ---- the token budget ---------------------------------------------------------------------------

def test_token_budget_keeps_the_best_within_one_document(tmp_path, tokenizer_dir):
    from phi1.data.stages.filter import run_filter
    from phi1.tokenizer import load_tokenizer

    rng = np.random.default_rng(0)
    recs = []
    for i in range(120):
        text = "def f(x):\n" + "    x = x + 1\n" * int(rng.integers(1, 40)) + "    return x\n"
        recs.append({"id": f"d{i:03d}", "text": text, "meta": {"edu_score": round(float(rng.integers(0, 6)) / 5, 4)}})
    tok = load_tokenizer(tokenizer_dir)
    size = {r["id"]: len(tok.encode(r["text"])) for r in recs}
    total = sum(size.values())
    budget = total // 3
    inp = write(tmp_path / "scored.jsonl", recs)
    kept_by = {}
    for workers in (1, 3):
        out = tmp_path / f"kept{workers}.jsonl"
        rep = run_filter(inp, out, keep_tokens=budget, tokenizer=str(tokenizer_dir), workers=workers, quiet=True)
        kept = read(out)
        kept_by[workers] = sorted(r["id"] for r in kept)
        kept_tokens = sum(size[r["id"]] for r in kept)
        dropped = [r for r in recs if r["id"] not in set(kept_by[workers])]
        assert kept_tokens <= budget and budget - kept_tokens < max(size[r["id"]] for r in dropped)
        assert rep.details["kept_tokens"] == kept_tokens and rep.details["keep_tokens"] == budget
        cut = rep.details["cutoff"]
        assert all(r["meta"]["edu_score"] >= cut for r in kept)
        assert all(r["meta"]["edu_score"] <= cut for r in dropped)
    assert kept_by[1] == kept_by[3]  # the cut does not depend on the task count
    # Estimated counts (bytes / 3.5) without a tokenizer, the budget in float notation through the CLI.
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "filter", str(inp), "--out", str(tmp_path / "est.jsonl"),
                        "--keep-tokens", "2e3", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    est = sum(-(-len(x["text"].encode()) // 3.5) for x in read(tmp_path / "est.jsonl"))
    assert 0 < est <= 2000


def test_pipeline_stages_with_a_code_model_and_a_token_budget(tmp_path, codegen_dir):
    """The same filter as `phi1 data run` stages, 2 tasks: hf: encoder, linear head, a token budget."""
    import yaml

    from test_data_stages import copy_slice

    from phi1.data.pipeline import run_pipeline
    from phi1.data.records import iter_records
    from phi1.data.stages.base import check_options
    from phi1.data.stages.classify import ClassifyStage
    from phi1.data.stages.filter import FilterStage

    with pytest.raises(ConfigError, match="batch_size: expected int"):
        check_options(ClassifyStage, "classify", {"encoder": f"hf:{codegen_dir}", "batch_size": "8"}, "stages[2]")
    with pytest.raises(ConfigError, match="exactly one of min_score, top_fraction or keep_tokens"):
        check_options(FilterStage, "filter", {"top_fraction": 0.5, "keep_tokens": 100}, "stages[4]")
    src = copy_slice(tmp_path / "src")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "workers": 2, "tasks": 2, "stages": [
        {"name": "collect", "sources": [str(src)]},
        {"name": "annotate", "annotator": "rules"},
        {"name": "classify", "encoder": f"hf:{codegen_dir}", "head": "linear",
         "task": "regression", "max_tokens": 128, "batch_size": 8, "embed_cache": str(tmp_path / "cache")},
        {"name": "score", "input": "collect", "classifier": "@classify", "batch_size": 8},
        {"name": "filter", "keep_tokens": 20000},
    ]}))
    run_pipeline(pipe, quiet=True)
    work = tmp_path / "work"
    train = json.loads((work / "classify" / "manifest.json").read_text())
    assert any(k.endswith("/forward_passes") and v > 0 for k, v in train["counts"].items())
    cut = json.loads((work / "filter" / "cutoff.json").read_text())
    kept = list(iter_records(work / "filter"))
    est = sum(-(-len(r["text"].encode()) // 3.5) for r in kept)
    assert kept and est == cut["kept_tokens"] <= 20000 and cut["scored"] > len(kept)
    assert all(r["meta"]["edu_score"] >= cut["cutoff"] for r in kept)
