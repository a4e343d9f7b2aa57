"""LLMClient against a real HTTP server on 127.0.0.1 that injects faults (tests/fake_openai.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from fake_openai import FakeOpenAI
from phi1.errors import ConfigError
from phi1.llm.client import LLMClient, parse_endpoints, parse_retry_after

MSG = [{"role": "user", "content": "tell me a story about a red kite"}]


def fast_client(url, **kw) -> LLMClient:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("base_delay", 0.005)
    kw.setdefault("max_delay", 0.05)
    return LLMClient(url, "fake-model", **kw)


@pytest.mark.parametrize("fault", ["429", "500", "503", "hang", "drop", "malformed", "empty"])
def test_each_fault_is_retried_then_recovered(fault):
    with FakeOpenAI(faults=[fault], hang_seconds=5, retry_after=0.01) as srv:
        # the timeout must fire on the hang but never on a normal answer from a loaded machine
        client = fast_client(srv.url, timeout=1.0 if fault == "hang" else 5.0)
        [res] = client.run_chat_many([MSG])
        assert res.ok, res.error
        assert res.attempts == 2
        assert res.text.startswith("Echo ")
        assert [r.fault for r in srv.requests] == [fault, None]
        assert client.stats.retries == 1 and client.stats.failures == 0
        assert sum(client.stats.errors.values()) == 1


@pytest.mark.parametrize("fault", ["500", "hang", "drop", "malformed", "empty", "429"])
def test_persistent_fault_is_recorded_as_failure_after_max_attempts(fault):
    with FakeOpenAI(fault_fn=lambda i, body: fault, hang_seconds=5, retry_after=0.0) as srv:
        client = fast_client(srv.url, timeout=0.2, max_attempts=3)
        [res] = client.run_chat_many([MSG])
        assert not res.ok
        assert res.text == "" and res.attempts == 3
        assert res.error  # never silently emptied: the reason is kept
        assert len(srv.requests) == 3
        assert client.stats.failures == 1 and client.stats.requests == 1 and client.stats.retries == 2


@pytest.mark.parametrize("status", ["400", "401", "404"])
def test_client_errors_are_not_retried(status):
    with FakeOpenAI(fault_fn=lambda i, body: status) as srv:
        client = fast_client(srv.url, max_attempts=5)
        [res] = client.run_chat_many([MSG])
        assert not res.ok and res.attempts == 1
        assert f"http_{status}" in res.error
        assert len(srv.requests) == 1


def test_retry_after_is_honoured():
    with FakeOpenAI(faults=["429"], retry_after=0.4) as srv:
        client = fast_client(srv.url, base_delay=0.001)
        [res] = client.run_chat_many([MSG])
        assert res.ok and res.attempts == 2
        first, second = srv.requests
        assert second.t_start - first.t_end >= 0.38  # base delay alone would be ~1 ms


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # a date in the past: no wait


def test_backoff_grows_exponentially_with_jitter():
    client = LLMClient("http://127.0.0.1:1/v1", "m", base_delay=0.1, max_delay=10)
    delays = [[client._backoff(a, None) for _ in range(200)] for a in (1, 2, 3, 4)]
    for a, ds in enumerate(delays, 1):
        cap = 0.1 * 2 ** (a - 1)
        assert all(cap / 2 <= d <= cap for d in ds)
        assert len(set(ds)) > 100  # jittered, not a constant
    assert LLMClient("http://127.0.0.1:1/v1", "m", base_delay=1, max_delay=2)._backoff(10, None) <= 2


def test_concurrency_is_honoured():
    with FakeOpenAI(latency=0.03) as srv:
        client = fast_client(srv.url, concurrency=5)
        results = client.run_chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(60)])
        assert all(r.ok for r in results)
        assert srv.max_in_flight == 5  # reached, never exceeded
        # results come back in request order
        assert [r.text.split(": ")[1] for r in results] == [f"q{i}" for i in range(60)]


def test_concurrency_holds_during_retries():
    seen = set()

    def first_attempt_fails(i, body):
        prompt = body["messages"][-1]["content"]
        if prompt in seen:
            return None
        seen.add(prompt)
        return "500"

    with FakeOpenAI(fault_fn=first_attempt_fails, latency=0.01) as srv:
        client = fast_client(srv.url, concurrency=3)
        results = client.run_chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(30)])
        assert all(r.ok and r.attempts == 2 for r in results)
        assert srv.max_in_flight <= 3 and len(srv.requests) == 60


def test_round_robin_spreads_over_endpoints():
    with FakeOpenAI() as a, FakeOpenAI() as b:
        client = fast_client([a.url, b.url], routing="round-robin", concurrency=2)
        results = client.run_chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(40)])
        assert all(r.ok for r in results)
        assert len(a.requests) == len(b.requests) == 20


def test_least_busy_prefers_the_faster_endpoint():
    with FakeOpenAI(latency=0.15) as slow, FakeOpenAI(latency=0.0) as fast:
        client = fast_client(f"{slow.url},{fast.url}", routing="least-busy", concurrency=4, timeout=2)
        results = client.run_chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(60)])
        assert all(r.ok for r in results)
        assert len(fast.requests) > 2 * len(slow.requests)


def test_dead_endpoint_fails_over_to_a_live_one():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with FakeOpenAI() as live:
        client = fast_client([dead, live.url], routing="round-robin", concurrency=2)
        results = client.run_chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(10)])
        assert all(r.ok for r in results)
        assert len(live.requests) == 10
        assert client.stats.errors.get("connection", 0) >= 1


def test_usage_and_cost_accounting():
    with FakeOpenAI() as srv:
        client = fast_client(srv.url, price_in_per_1m=2000.0, price_out_per_1m=4000.0)
        results = client.run_chat_many([MSG] * 3)
        pt = sum(r.usage["prompt_tokens"] for r in results)
        ct = sum(r.usage["completion_tokens"] for r in results)
        assert pt == 3 * len(MSG[0]["content"].split())
        st = client.stats
        assert (st.prompt_tokens, st.completion_tokens, st.tokens) == (pt, ct, pt + ct)
        assert st.estimated_cost == pytest.approx(pt / 1000 * 2.0 + ct / 1000 * 4.0)
        assert st.as_dict()["tokens"] == pt + ct


def test_completions_endpoint_and_sampling_passthrough():
    with FakeOpenAI() as srv:
        client = fast_client(srv.url)
        [res] = client.run_complete_many(["def add(a, b):"], temperature=0.2, max_tokens=3, stop=["\n"], top_p=None)
        assert res.ok and res.finish_reason == "length"
        body = srv.requests[0].body
        assert srv.requests[0].path == "/v1/completions"
        assert body["prompt"] == "def add(a, b):" and body["max_tokens"] == 3 and body["stop"] == ["\n"]
        assert "top_p" not in body  # None means "server default", not null


def test_async_api_in_one_loop_and_reuse_across_loops():
    with FakeOpenAI() as srv:
        client = fast_client(srv.url)

        async def go():
            r1 = await client.chat(MSG)
            r2 = await client.complete("x y z")
            await client.aclose()
            return r1, r2

        r1, r2 = asyncio.run(go())
        assert r1.ok and r2.ok
        # a second event loop gets fresh connections
        assert all(r.ok for r in client.run_chat_many([MSG, MSG]))
        assert client.stats.requests == 4


def test_api_key_sent_from_env_and_never_leaked(monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("PHI1_TEST_KEY", secret)
    with FakeOpenAI(api_key=secret) as srv:
        client = fast_client(srv.url, api_key_env="PHI1_TEST_KEY")
        [res] = client.run_chat_many([MSG])
        assert res.ok
        assert srv.requests[0].headers["authorization"] == f"Bearer {secret}"
        assert secret not in repr(client) and secret not in str(client.stats.as_dict())
    # a server that reflects the header in its error body: the key must be scrubbed from the error
    with FakeOpenAI(api_key="other", echo_auth=True) as srv:
        client = fast_client(srv.url, api_key_env="PHI1_TEST_KEY")
        [res] = client.run_chat_many([MSG])
        assert not res.ok and "http_401" in res.error
        assert "received_authorization" in res.error and secret not in res.error and "***" in res.error


def test_bad_configuration_is_reported_with_the_field(monkeypatch):
    monkeypatch.delenv("PHI1_NOPE", raising=False)
    with pytest.raises(ConfigError, match="PHI1_NOPE"):
        LLMClient("http://127.0.0.1:1/v1", "m", api_key_env="PHI1_NOPE")
    with pytest.raises(ConfigError, match="routing"):
        LLMClient("http://127.0.0.1:1/v1", "m", routing="random")
    with pytest.raises(ConfigError, match="concurrency"):
        LLMClient("http://127.0.0.1:1/v1", "m", concurrency=0)
    with pytest.raises(ConfigError, match="endpoint"):
        parse_endpoints("localhost:8000")
    assert parse_endpoints("http://a:1, http://b:2/v1/") == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_endpoints("https://api.example.com/openai/v1") == ["https://api.example.com/openai/v1"]


def test_timeout_bounds_a_hanging_request():
    with FakeOpenAI(fault_fn=lambda i, b: "hang", hang_seconds=10) as srv:
        client = fast_client(srv.url, timeout=0.2, max_attempts=2)
        t0 = time.monotonic()
        [res] = client.run_chat_many([MSG])
        assert not res.ok and "timeout" in res.error
        assert time.monotonic() - t0 < 3.0  # 2 x 0.2 s timeouts plus a tiny backoff
