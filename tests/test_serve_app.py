"""The HTTP app in-process (no subprocess): what a client sees when decoding fails mid-stream."""

from __future__ import annotations

import json

import pytest
from serve_support import fail_decode_step

pytest.importorskip("fastapi")


def test_failure_mid_stream_ends_with_an_error_event(tiny_model_dir):
    from starlette.testclient import TestClient

    from phi1.infer.engine import Engine
    from phi1.infer.server import ServeConfig, create_app
    from phi1.model import load_for_inference

    model, tok = load_for_inference(tiny_model_dir, device="cpu", dtype="float32")
    engine = Engine(model, tok, max_batch=2).start()
    fail_decode_step(engine, 5, "CUDA error: an illegal memory access")
    app = create_app(engine, tok, "tiny", ServeConfig(model_dir=str(tiny_model_dir)))
    body = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 50, "temperature": 0, "stream": True}
    with TestClient(app) as client:
        with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            events = [ln[len("data: "):] for ln in resp.iter_lines() if ln]
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert "illegal memory access" in err["message"] and err["type"] == "server_error"
        assert any("choices" in json.loads(e) for e in events[:-2])  # it had been streaming text
        # Non-streaming requests keep working afterwards.
        r = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert client.get("/metrics.json").json()["sequences_failed"] == 1


def test_serve_config_errors_name_the_flag(tmp_path, tiny_model_dir, monkeypatch):
    from phi1.errors import Phi1Error
    from phi1.infer.server import ServeConfig

    with pytest.raises(Phi1Error, match="--model"):
        ServeConfig(model_dir=str(tmp_path)).validate()
    with pytest.raises(Phi1Error, match="--max-batch-size"):
        ServeConfig(model_dir=str(tiny_model_dir), max_batch_size=0).validate()
    monkeypatch.delenv("PHI1_NO_SUCH_KEY", raising=False)
    with pytest.raises(Phi1Error, match="PHI1_NO_SUCH_KEY"):
        ServeConfig(model_dir=str(tiny_model_dir), api_key_env="PHI1_NO_SUCH_KEY").api_key()
    monkeypatch.setenv("PHI1_SOME_KEY", "k1")
    assert ServeConfig(model_dir=str(tiny_model_dir), api_key_env="PHI1_SOME_KEY").api_key() == "k1"
