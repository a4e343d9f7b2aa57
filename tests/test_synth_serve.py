"""End to end with our own server: `phi1 serve` (tiny model) answers a `phi1 synth` job and the judge."""

from __future__ import annotations


import pytest
from serve_support import running_server

from phi1.llm.client import LLMClient
from phi1.synth.job import JobConfig, run_job
from phi1.utils.io import read_jsonl

KEY = "sk-synth-serve-test"


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("synth-serve") / "server.log"
    with running_server(tiny_model_dir, log, "--api-key-env", "SYNTH_SERVE_KEY",
                        env={"SYNTH_SERVE_KEY": KEY}) as (base, _proc):
        yield {"url": f"{base}/v1", "model": tiny_model_dir.name}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_synth_job_against_phi1_serve(served, tmp_path, monkeypatch, api):
    monkeypatch.setenv("SYNTH_SERVE_KEY", KEY)
    out = tmp_path / "stories.jsonl"
    cfg = JobConfig("stories", served["url"], served["model"], 4, str(out), concurrency=4, api=api,
                    api_key_env="SYNTH_SERVE_KEY", sampling={"max_tokens": 12, "temperature": 0.8}, timeout=60)
    rep = run_job(cfg)
    assert rep.complete and rep.generated == 4
    recs = list(read_jsonl(out))
    assert len(recs) == 4 and all(r["text"] for r in recs)
    assert all(0 < r["meta"]["usage"]["completion_tokens"] <= 12 for r in recs)
    assert KEY not in out.read_text()


def test_client_without_key_is_refused_by_phi1_serve(served):
    client = LLMClient(served["url"], served["model"], max_attempts=3, base_delay=0.001)
    [res] = client.run_complete_many(["def f():"], max_tokens=4)
    assert not res.ok and res.attempts == 1 and "http_401" in res.error
