"""`phi1 synth KIND --batch` (OpenAI Batch API) and structured output (`response_format`), on the fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeOpenAI, default_answer
from phi1.cli import main
from phi1.errors import ConfigError, Phi1Error
from phi1.synth.job import JobConfig, run_job, side_paths
from phi1.synth.prompts import iter_prompts
from phi1.synth.spec import DEFAULT_DIR, load_spec, spec_from_dict
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import read_jsonl


def job(url, out, count, **kw) -> JobConfig:
    kw = {"kind": "stories", "seed": 5, "timeout": 5.0, "base_delay": 0.01, "poll_interval": 0.01, **kw}
    kind = kw.pop("kind")
    return JobConfig(kind, url, "fake-model", count, str(out), **kw)


def ledger(out: Path) -> list[dict]:
    recs = list(read_jsonl(out))
    assert len({r["meta"]["index"] for r in recs}) == len(recs), "an index is in the ledger twice"
    return sorted(recs, key=lambda r: r["meta"]["index"])


def manifest(out: Path) -> dict:
    return json.loads(side_paths(out)[0].read_text())


def failures(out: Path) -> dict[int, dict]:
    path = side_paths(out)[1]
    return {r["index"]: r for r in read_jsonl(path)} if path.exists() else {}


def indices_of(srv: FakeOpenAI, batch: dict) -> list[int]:
    return [int(line["custom_id"].split("-")[1]) for line in srv.batch_lines(batch["id"])]


def prompts_of(kind: str, seed: int, count: int, spec=None) -> dict[int, str]:
    spec = spec or load_spec(None, kind)
    return {i: bp.messages[-1]["content"] for i, bp, _ in iter_prompts(spec, seed, count)}


def without_batch_fields(rec: dict) -> dict:
    meta = {k: v for k, v in rec["meta"].items() if k not in ("batch_id", "attempts")}
    return {**rec, "meta": meta}


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_batch_job_writes_the_records_a_normal_job_writes(tmp_path, api):
    n = 23
    with FakeOpenAI(batch_polls=2) as srv:
        rep = run_job(job(srv.url, tmp_path / "b.jsonl", n, api=api, batch=True, batch_size=10))
        assert rep.complete and rep.generated == n and rep.failed == 0
        assert [len(srv.batch_lines(b["id"])) for b in srv.batches] == [10, 10, 3]  # split at --batch-size
        assert all(b["status"] == "completed" for b in srv.batches)
        assert not any(r.path.endswith("/completions") and r.batch_id is None for r in srv.requests)
        line = srv.batch_lines(srv.batches[0]["id"])[0]
        url = "/v1/chat/completions" if api == "chat" else "/v1/completions"
        assert line["method"] == "POST" and line["url"] == url and srv.batches[0]["endpoint"] == url
        assert srv.batches[0]["completion_window"] == "24h"
        assert line["body"]["model"] == "fake-model" and line["body"]["max_tokens"] == 600
        assert ("messages" in line["body"]) == (api == "chat") and ("prompt" in line["body"]) == (api != "chat")
        assert rep.stats["requests"] == n and rep.stats["completion_tokens"] > 0
        batch_objs, srv_lines = srv.batches, {b["id"]: srv.batch_lines(b["id"]) for b in srv.batches}
    with FakeOpenAI() as srv:
        run_job(job(srv.url, tmp_path / "n.jsonl", n, api=api))
    batched, normal = ledger(tmp_path / "b.jsonl"), ledger(tmp_path / "n.jsonl")
    assert [r["meta"]["index"] for r in batched] == list(range(n))
    assert [without_batch_fields(r) for r in batched] == [without_batch_fields(r) for r in normal]
    assert [r["meta"]["batch_id"] for r in batched] == [b["id"] for b in batch_objs for _ in srv_lines[b["id"]]]
    sent = [line for b in batch_objs for line in srv_lines[b["id"]]]
    assert [line["custom_id"] for line in sent] == [f"rec-{r['meta']['index']}-{r['meta']['prompt_sha256'][:16]}"
                                                    for r in batched]  # the record's index and prompt hash
    assert all(r["meta"]["usage"]["total_tokens"] > 0 and r["meta"]["attempts"] == 1 for r in batched)
    entries = manifest(tmp_path / "b.jsonl")["batches"]
    assert [e["state"] for e in entries] == ["ingested"] * 3
    assert [e["indices"] for e in entries] == [[[0, 9]], [[10, 19]], [[20, 22]]]
    assert manifest(tmp_path / "b.jsonl")["runs"][-1]["mode"] == "batch"


def test_partly_failed_batch_records_failures_and_a_rerun_sends_only_those(tmp_path):
    out, n = tmp_path / "s.jsonl", 16
    prompts = prompts_of("stories", 5, n)
    bad = {2: "500", 5: "hang", 7: "malformed", 11: "lost", 12: "empty"}
    by_prompt = {prompts[i]: f for i, f in bad.items()}
    failing = {"on": True}
    fault_fn = lambda i, body: by_prompt.get(body["messages"][-1]["content"]) if failing["on"] else None  # noqa: E731
    with FakeOpenAI(fault_fn=fault_fn, batch_polls=0) as srv:
        rep = run_job(job(srv.url, out, n, batch=True))
        assert not rep.complete and rep.generated == n - len(bad) and rep.failed == len(bad)
        fails = failures(out)
        assert set(fails) == set(bad)
        assert fails[2]["error"].startswith("http_500") and fails[5]["error"].startswith("timeout")
        assert fails[7]["error"].startswith("empty_choices") and fails[12]["error"].startswith("empty_choices")
        assert fails[11]["error"].startswith("batch_missing")
        assert all(f["batch_id"] == srv.batches[0]["id"] for f in fails.values())
        assert sorted(r["meta"]["index"] for r in ledger(out)) == sorted(set(range(n)) - set(bad))
        failing["on"] = False
        rep = run_job(job(srv.url, out, n, batch=True))
        assert rep.complete and rep.already_done == n - len(bad) and rep.generated == len(bad)
        assert len(srv.batches) == 2 and indices_of(srv, srv.batches[1]) == sorted(bad)
        assert [r["meta"]["index"] for r in ledger(out)] == list(range(n))
        assert not side_paths(out)[1].exists()  # nothing left failing


@pytest.mark.parametrize("how", ["failed", "expired", "cancelled"])
def test_a_batch_that_ends_badly_is_resubmitted_for_its_missing_records(tmp_path, how):
    out, n = tmp_path / "s.jsonl", 10
    with FakeOpenAI(batch_faults=[how], batch_polls=0) as srv:
        rep = run_job(job(srv.url, out, n, batch=True))
        kept = n // 2 if how == "expired" else 0
        assert rep.generated == kept and rep.failed == n - kept and not rep.complete
        assert rep.stopped.startswith(f"batch {srv.batches[0]['id']} ended {how}")
        errors = {f["error"].split(":")[0] for f in failures(out).values()}
        assert errors == ({"batch_expired"} if how == "expired" else {"batch_missing"})
        rep = run_job(job(srv.url, out, n, batch=True))
        assert rep.complete and len(srv.batches) == 2
        assert indices_of(srv, srv.batches[1]) == list(range(kept, n))
        assert [r["meta"]["index"] for r in ledger(out)] == list(range(n))


def test_lost_create_answer_adopts_the_batch_instead_of_making_a_second(tmp_path):
    out = tmp_path / "s.jsonl"
    with FakeOpenAI(create_faults=["drop"], batch_polls=0) as srv:
        rep = run_job(job(srv.url, out, 6, batch=True))
        assert rep.complete and len(srv.batches) == 1 and len(srv.files) == 2  # input + output
        creates = [r for r in srv.requests if r.method == "POST" and r.path.endswith("/batches")]
        assert len(creates) == 1  # the retry found the batch in the list and did not POST again


def test_resume_after_an_interrupted_upload_or_create_makes_one_batch(tmp_path):
    out = tmp_path / "s.jsonl"
    with FakeOpenAI(create_faults=["503"] * 2, batch_polls=0) as srv:
        with pytest.raises(Phi1Error, match=r"batch create failed after 2 attempts: HTTP 503.*rerun the same command"):
            run_job(job(srv.url, out, 6, batch=True, max_attempts=2))
        [entry] = manifest(out)["batches"]
        assert entry["state"] == "creating" and entry["input_file_id"] in srv.files and not srv.batches
        # as if killed before the upload's answer was recorded: the file is found again by name and size
        m = manifest(out)
        m["batches"][0]["state"] = "uploading"
        del m["batches"][0]["input_file_id"]
        side_paths(out)[0].write_text(json.dumps(m))
        rep = run_job(job(srv.url, out, 6, batch=True))
        assert rep.complete and len(srv.batches) == 1
        assert [f["purpose"] for f in srv.files.values()].count("batch") == 1  # not uploaded a second time
        assert srv.batches[0]["input_file_id"] == entry["input_file_id"]


def test_resume_mid_ingest_appends_only_the_missing_records(tmp_path):
    out = tmp_path / "s.jsonl"
    with FakeOpenAI(batch_polls=0) as srv:
        run_job(job(srv.url, out, 8, batch=True))
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:3]) + lines[3][:40])  # killed while writing record 3: a torn tail
        m = manifest(out)
        m["batches"][0]["state"] = "ended"
        side_paths(out)[0].write_text(json.dumps(m))
        rep = run_job(job(srv.url, out, 8, batch=True))
        assert rep.complete and rep.already_done == 3 and rep.generated == 5 and len(srv.batches) == 1
        assert "".join(out.read_text().splitlines(keepends=True)) == "".join(lines)


def cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "phi1", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_while_polling_then_rerun_collects_the_same_batch(tmp_path, capsys):
    out, n = tmp_path / "s.jsonl", 12
    with FakeOpenAI(batch_hold=True) as srv:
        args = ["synth", "stories", "--endpoint", srv.url, "--model", "fake-model", "--count", str(n), "--out", str(out),
                "--seed", "5", "--batch", "--poll-interval", "0.05", "--batch-size", "8"]
        proc = cli(*args)
        deadline = time.monotonic() + 30
        polls = lambda: sum(1 for r in srv.requests if r.method == "GET" and "/batches/" in r.path)  # noqa: E731
        while polls() < 6:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never polled"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        entries = manifest(out)["batches"]
        assert [(e["state"], e["batch_id"]) for e in entries] == [("submitted", b["id"]) for b in srv.batches]
        assert [e["n"] for e in entries] == [8, 4]
        # a normal run would pay for these records a second time: refused until the batches are collected
        assert main(args[:-5] + ["--timeout", "2"]) == 2
        assert "still open" in capsys.readouterr().err and not out.exists()
        srv.release_batches()
        proc = cli(*args)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        report = json.loads(stdout.strip().splitlines()[-1])
        assert report["complete"] and report["generated"] == n
        assert len(srv.batches) == 2  # the same two batches, none submitted again
        assert [r["meta"]["index"] for r in ledger(out)] == list(range(n))
        assert sorted(r["meta"]["batch_id"] for r in ledger(out)) == sorted([srv.batches[0]["id"]] * 8 +
                                                                         [srv.batches[1]["id"]] * 4)


def test_batch_errors_are_one_line_and_never_show_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_BATCH_KEY", "sk-very-secret-123")
    out = tmp_path / "s.jsonl"
    with FakeOpenAI(api_key="other", echo_auth=True) as srv:
        with pytest.raises(Phi1Error) as err:
            run_job(job(srv.url, out, 3, batch=True, api_key_env="MY_BATCH_KEY"))
        msg = str(err.value)
        assert "HTTP 401" in msg and "sk-very-secret-123" not in msg and "***" in msg and "\n" not in msg
        assert manifest(out)["batches"] == []  # the refused upload owns no records: a normal run may go on
        for p in tmp_path.iterdir():
            assert "sk-very-secret-123" not in p.read_text()
    with pytest.raises(ConfigError, match="one --endpoint"):
        run_job(job("http://127.0.0.1:1/v1,http://127.0.0.1:2/v1", tmp_path / "x.jsonl", 3, batch=True))
    with pytest.raises(ConfigError, match="batch_size"):
        run_job(job("http://127.0.0.1:1/v1", tmp_path / "x.jsonl", 3, batch=True, batch_size=50_001))


# ------------------------------------------------------------------ structured output
SCHEMA = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["title", "story", "words"],
    "properties": {"title": {"type": "string"}, "story": {"type": "string"}, "words": {"type": "integer"}}}}}


def structured_spec(tmp_path: Path, **fields) -> Path:
    raw = read_yaml_mapping(DEFAULT_DIR / "stories.yaml", "spec")
    path = tmp_path / "structured.yaml"
    path.write_text(yaml.safe_dump({**raw, "response_format": SCHEMA, "text_field": "story", **fields}))
    return path


@pytest.mark.parametrize("batch", [False, True])
def test_structured_output_text_comes_from_the_named_field(tmp_path, batch):
    spec_path, out, n = structured_spec(tmp_path), tmp_path / "s.jsonl", 10
    prompts = prompts_of("stories", 5, n, load_spec(spec_path, "stories"))
    odd = {prompts[3]: "Once upon a time (no JSON here)", prompts[6]: json.dumps({"title": "no story"})}
    responder = lambda body: odd.get(body["messages"][-1]["content"]) or default_answer(body)  # noqa: E731
    with FakeOpenAI(responder=responder, batch_polls=0) as srv:
        rep = run_job(job(srv.url, out, n, spec=str(spec_path), batch=batch, max_attempts=1))
        bodies = [r.body for r in srv.requests if r.path.endswith("/chat/completions")]
        assert len(bodies) == n and all(b["response_format"] == SCHEMA for b in bodies)
    assert rep.generated == n - 2 and rep.failed == 2
    fails = failures(out)
    assert "not valid JSON" in fails[3]["error"] and fails[3]["error"].startswith("structured:")
    assert "no non-empty string 'story' (missing" in fails[6]["error"]
    for r in ledger(out):
        prompt = r["meta"]["prompt"][-1]["content"]
        assert r["text"] == r["meta"]["structured"]["story"] == r["meta"]["structured"]["title"]
        assert r["text"].startswith("Echo ") and r["meta"]["structured"]["words"] == len(prompt.split())
        assert ("batch_id" in r["meta"]) == batch
    with FakeOpenAI(batch_polls=0) as srv:  # the failed ones are asked again by the next run
        rep = run_job(job(srv.url, out, n, spec=str(spec_path), batch=batch))
        assert rep.complete and rep.generated == 2


@pytest.mark.parametrize("fields, message", [
    ({"response_format": None}, "text_field needs response_format"),
    ({"response_format": {"type": "text"}}, "asks for no JSON answer"),
    ({"response_format": {"type": "json_object"}}, "unless the prompt mentions JSON"),
    ({"text_field": "body"}, "text_field 'body' is not among the schema's properties"),
    ({"text_field": "words"}, "has type 'integer'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}}, "1-64 letters"),
    ({"response_format": {**SCHEMA, "json_schema": {**SCHEMA["json_schema"], "schema": {
        **SCHEMA["json_schema"]["schema"], "required": ["title"]}}}}, "not in the schema's required list"),
])
def test_bad_structured_specs_are_refused_naming_the_field(tmp_path, fields, message):
    raw = {**read_yaml_mapping(DEFAULT_DIR / "stories.yaml", "spec"), "response_format": SCHEMA,
           "text_field": "story", **fields}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(raw, "stories", source="my.yaml")
    ok = {**raw, "response_format": {"type": "json_object"}, "template": raw["template"] + " Answer in JSON."}
    if "response_format" in raw:
        assert spec_from_dict({**ok, "text_field": "story"}, "stories").response_format == {"type": "json_object"}
