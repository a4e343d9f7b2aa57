"""`phi1 serve` as a user runs it: a real subprocess on a free loopback port, the official openai client.

One server per module (starting it costs a few seconds): batch 8, API key on,
max_tokens limit 480, at most 4 choices per request.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_support import alone, running_server

openai = pytest.importorskip("openai")

KEY = "sk-test-phi1-serve"
PROMPTS = ["def fibonacci(n):\n    ", "import json\n\nclass Encoder:", "x = [1, 2, 3]\nfor", "# sort a list\n"]


pytestmark = pytest.mark.xdist_group("serve")  # one server for the module, on one worker


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(tiny_model_dir, log, "--api-key-env", "PHI1_TEST_KEY", "--max-batch-size", "8",
                        "--max-tokens-limit", "480", "--max-n", "4", env={"PHI1_TEST_KEY": KEY},
                        timeout=90) as (base, proc):
        yield {"base": base, "model": tiny_model_dir.name, "proc": proc, "log": log}
    assert KEY not in log.read_text()  # the key is never logged


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)






def _metrics(server) -> dict:
    r = httpx.get(server["base"] + "/metrics.json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    return r.json()


def _post(server, path, body, key=KEY, raw=None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(server["base"] + path, content=content, headers=headers, timeout=60)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [server["model"]]
    assert httpx.get(server["base"] + "/health").json()["status"] == "ok"


def test_completion_greedy_equals_generate(server, client, local):
    # A list of prompts in one request: decoded together, each equal to generating it alone.
    r = client.completions.create(model=server["model"], prompt=PROMPTS, max_tokens=24, temperature=0)
    assert len(r.choices) == len(PROMPTS)
    tok = local[1]
    for i, prompt in enumerate(PROMPTS):
        ref = alone(local, prompt, 24)
        assert r.choices[i].index == i
        assert r.choices[i].text == ref.text, prompt
        assert r.choices[i].finish_reason == ref.finish_reason
    ref_counts = [alone(local, p, 24).completion_tokens for p in PROMPTS]
    assert r.usage.completion_tokens == sum(ref_counts)
    assert r.usage.prompt_tokens == sum(len(tok.encode(p)) for p in PROMPTS)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_completion(server, client, local):
    ref = alone(local, PROMPTS[1], 40)
    chunks = list(client.completions.create(model=server["model"], prompt=PROMPTS[1], max_tokens=40,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.finish_reason]
    assert len([c for c in chunks if c.choices]) > 2  # really streamed, not one blob
    assert chunks[-1].usage.completion_tokens == ref.completion_tokens
    # The wire format ends with the [DONE] sentinel.
    with httpx.stream("POST", server["base"] + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": server["model"], "prompt": "a", "max_tokens": 3, "stream": True}) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_chat_streaming_and_not(server, client, local):
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Add two numbers."}]
    # The model directory carries phi-3's template (every model phi1 saves has one).
    prompt = local[1].chat().render(msgs, add_generation_prompt=True)
    assert prompt == "<|system|>\nYou write Python.<|end|>\n<|user|>\nAdd two numbers.<|end|>\n<|assistant|>\n"
    ref = alone(local, prompt, 30, stop=["<|end|>"])
    r = client.chat.completions.create(model=server["model"], messages=msgs, max_tokens=30, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.completion_tokens == ref.completion_tokens
    chunks = list(client.chat.completions.create(model=server["model"], messages=msgs, max_tokens=30,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason


def test_stop_seed_and_n(server, client, local):
    full = alone(local, PROMPTS[0], 30)
    stop = full.text[6:9]
    r = client.completions.create(model=server["model"], prompt=PROMPTS[0], max_tokens=30, temperature=0,
                                  stop=stop)
    assert r.choices[0].text == full.text[: full.text.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    # Seeded sampling: choice j draws from seed + j, independent of whatever shares the batch.
    kw = dict(temperature=1.0, top_p=0.9, max_tokens=20)
    r = client.completions.create(model=server["model"], prompt=PROMPTS[2], n=2, seed=11,
                                  extra_body={"top_k": 50}, **kw)
    ref0 = alone(local, PROMPTS[2], 20, temperature=1.0, top_p=0.9, top_k=50, seed=11)
    ref1 = alone(local, PROMPTS[2], 20, temperature=1.0, top_p=0.9, top_k=50, seed=12)
    assert [c.text for c in r.choices] == [ref0.text, ref1.text]
    assert ref0.text != ref1.text


def test_concurrent_requests_are_batched(server, client, local):
    before = _metrics(server)
    prompts = PROMPTS + [p + " " for p in PROMPTS[:2]]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def one(i):
        barrier.wait()
        r = client.completions.create(model=server["model"], prompt=prompts[i], max_tokens=32, temperature=0)
        results[i] = r.choices[0].text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, p in enumerate(prompts):
        assert results[i] == alone(local, p, 32).text, p
    after = _metrics(server)
    assert after["requests"] - before["requests"] == len(prompts)
    batched_steps = sum(v - before["batch_size_histogram"].get(k, 0)
                        for k, v in after["batch_size_histogram"].items() if int(k) >= 2)
    assert batched_steps > 0, after
    assert after["max_batch_occupancy"] >= 2
    assert after["tokens_generated"] > before["tokens_generated"]
    assert after["active_sequences"] == 0


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "max_tokens": 481}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "frequency_penalty_x": 1}, 400, "frequency_penalty_x"),
    ({"prompt": "x", "n": 5}, 400, "n"),
    ({"prompt": ["a", "b", "c"], "n": 2}, 400, "n"),
    ({"prompt": "x", "echo": True, "stream": True}, 400, "stream"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"prompt": [1, 10**9], "echo": True, "max_tokens": 0}, 400, "prompt"),
    ({"prompt": "def f(x): return x\n" * 200}, 400, "prompt"),
    ({"prompt": 42}, 400, "prompt"),
    ({"prompt": "x", "stop": [1]}, 400, "stop"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({}, 400, "prompt"),
    ({"prompt": "x", "model": "gpt-9"}, 404, "model"),
])
def test_bad_completion_requests(server, body, status, param):
    body = {"model": server["model"], **body}
    r = _post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_bad_json_chat_and_auth(server, client):
    r = _post(server, "/v1/completions", None, raw=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = _post(server, "/v1/chat/completions", {"model": server["model"], "messages": [{"role": "robot",
                                                                                      "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = _post(server, "/v1/chat/completions", {"model": server["model"], "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    for key in (None, "sk-wrong"):
        r = _post(server, "/v1/completions", {"model": server["model"], "prompt": "x"}, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server["base"] + "/metrics").status_code == 401
    bad = openai.OpenAI(base_url=server["base"] + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=server["model"], prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=server["model"], prompt="x", max_tokens=1000)
    assert "max_tokens" in str(exc.value)
    # ... and the server keeps serving.
    assert client.completions.create(model=server["model"], prompt="x", max_tokens=2).choices[0].text is not None


def test_disconnect_mid_stream_cancels(server, client, local):
    prompt = PROMPTS[3]
    # No early EOS: the sequence would run hundreds of tokens (seconds here) unless cancelled.
    assert alone(local, prompt, 40).finish_reason == "length"
    before = _metrics(server)
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", server["base"] + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": server["model"], "prompt": prompt, "max_tokens": 480, "temperature": 0,
                            "stream": True}) as resp:
            it = resp.iter_lines()
            got = [next(it) for _ in range(3)]
            assert got[0].startswith("data: {")
        # leaving the block closes the connection mid-stream
    deadline = time.time() + 10
    while True:
        m = _metrics(server)
        if m["sequences_cancelled"] > before["sequences_cancelled"] and m["active_sequences"] == 0:
            break
        assert time.time() < deadline, m
        time.sleep(0.05)
    generated = m["tokens_generated"] - before["tokens_generated"]
    time.sleep(0.3)
    assert _metrics(server)["tokens_generated"] == m["tokens_generated"]  # nothing more is decoded for it
    assert generated < 480
    # The server still answers, with the same output as before.
    r = client.completions.create(model=server["model"], prompt=PROMPTS[1], max_tokens=10, temperature=0)
    assert r.choices[0].text == alone(local, PROMPTS[1], 10).text


def test_echo_and_logprobs_agree_with_eval_loss(server, local):
    """lm-evaluation-harness's local-completions scores log-likelihood with echo=True and logprobs: the prompt's
    own token logprobs must be the model's. Sent as token ids (as lm-eval does), prompt + canonical solution:
    the solution's logprobs sum to minus phi1's `eval loss` nats for that task, token for token."""
    from phi1.eval.loss import solution_loss_per_task
    from phi1.eval.problems import load_humaneval

    model, tok = local
    problems = [p for p in load_humaneval().values()][:2]
    per_task = solution_loss_per_task(model, tok, problems, batch_size=1)
    for p in problems:
        prompt, sol = tok.encode(p.prompt), tok.encode(p.canonical_solution)
        r = _post(server, "/v1/completions", {"model": server["model"], "prompt": prompt + sol, "echo": True,
                                               "max_tokens": 0, "logprobs": 1, "temperature": 0})
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == len(prompt) + len(sol) and lp["token_logprobs"][0] is None
        assert r.json()["choices"][0]["text"] == tok.decode(prompt + sol)
        nats, n = per_task[p.task_id]
        assert n == len(sol)
        assert -sum(lp["token_logprobs"][len(prompt):]) == pytest.approx(nats, rel=1e-4, abs=1e-3)
        # top_logprobs (1 per position) hold the argmax; lm-eval's is_greedy reads them
        for i in range(1, len(lp["tokens"])):
            (best, value), = lp["top_logprobs"][i].items()
            assert value >= lp["token_logprobs"][i] - 1e-5


def test_logprobs_of_a_generated_completion(server, client, local):
    """logprobs=3 without echo: the generated tokens, each with its logprob and 3 alternatives; greedy tokens are
    the top alternative. With echo the text starts with the prompt. The official client parses both."""
    model, tok = local
    prompt = PROMPTS[0]
    r = client.completions.create(model=server["model"], prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == r.usage.completion_tokens
    for tok_text, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(value, abs=1e-4)
    assert lp.text_offset[0] == len(prompt)
    r2 = client.completions.create(model=server["model"], prompt=prompt, max_tokens=8, temperature=0, echo=True,
                                   logprobs=0)
    assert r2.choices[0].text == prompt + choice.text
    assert r2.choices[0].logprobs.token_logprobs[0] is None
    assert r2.choices[0].logprobs.token_logprobs[-len(lp.tokens):] == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_metrics_in_prometheus_text_format(server):
    """/metrics is Prometheus' text format (read here by prometheus_client's own parser); /metrics.json holds the
    same numbers as JSON."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {KEY}"}
    _post(server, "/v1/completions", {"model": server["model"], "prompt": PROMPTS[1], "max_tokens": 4})
    r = httpx.get(server["base"] + "/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    snap = _metrics(server)
    value = {f.name: f.samples[0].value for f in families.values() if f.samples}
    assert families["phi1_requests"].type == "counter" and families["phi1_active_sequences"].type == "gauge"
    assert value["phi1_requests"] == snap["requests"] >= 1
    assert value["phi1_generation_tokens"] == snap["tokens_generated"] > 0
    assert value["phi1_max_batch_size"] == 8
    assert families["phi1_requests"].samples[0].labels == {"model": server["model"]}
    by_size = {s.labels["batch_size"]: s.value for s in families["phi1_decode_steps_by_batch_size"].samples}
    assert by_size == {k: float(v) for k, v in snap["batch_size_histogram"].items()}
