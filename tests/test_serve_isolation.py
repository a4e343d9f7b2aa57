"""One request never breaks another's (issue 11): bad fields, faults in one sequence, malformed or
huge bodies, and a port already in use.

Real HTTP on 127.0.0.1: one `phi1 serve` subprocess for the module (batch 4, body cap 4 MiB), and
an in-process uvicorn where a fault has to be injected into the engine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_support import Collector, alone, free_port, running_server

pytest.importorskip("fastapi")

PROMPTS = ["def fibonacci(n):\n    ", "import json\n\nclass Encoder:", "x = [1, 2, 3]\nfor", "# sort a list\n",
           "from email import", "    return"]
BODY_CAP_MB = 4
ERROR_KEYS = {"message", "type", "param", "code"}


pytestmark = pytest.mark.xdist_group("serve_isolation")  # one server for the module, on one worker


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-iso") / "server.log"
    with running_server(tiny_model_dir, log, "--max-batch-size", "4", "--max-n", "4",
                        "--max-body-mb", str(BODY_CAP_MB), timeout=90) as (base, proc):
        yield {"base": base, "model": tiny_model_dir.name, "proc": proc, "log": log}






def _post(base, body=None, raw=None, path="/v1/completions", timeout=60, **kw):
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(base + path, content=content, headers={"Content-Type": "application/json"},
                      timeout=timeout, **kw)


def _error(r, status) -> dict:
    """The response is `status` with an OpenAI-shaped JSON error body; return its error object."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS and isinstance(err["message"], str) and err["message"]
    return err


def _metrics(base) -> dict:
    return httpx.get(base + "/metrics.json", timeout=10).json()


def _read_stream(base, body, out: dict, first: threading.Event):
    """Stream a completion, recording its data lines (and when the last arrived) into `out`."""
    lines = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as resp:
        out["status"] = resp.status_code
        for ln in resp.iter_lines():
            if ln:
                lines.append(ln[len("data: "):])
                first.set()
    out["end"] = time.perf_counter()
    out["events"] = lines
    first.set()


def _stream_text(events) -> tuple[str, list]:
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], [c for c in chunks if "error" in c]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return text, finals


# Bodies with one out-of-range field (model added below) and the field the 400 must name. Before the
# edge checked ranges, the seed and top_k ones raised inside batch admission and failed every running
# sequence; NaN reached the sampler.
BAD_FIELDS = [
    ('"seed": 18446744073709551616, "temperature": 1.0', "seed"),
    ('"seed": -9223372036854775809, "temperature": 1.0', "seed"),
    ('"top_k": 1e30, "temperature": 1.0', "top_k"),
    ('"top_k": 1000000000000000000000000000000, "temperature": 1.0', "top_k"),
    ('"top_k": -2', "top_k"),
    ('"max_tokens": -5', "max_tokens"),
    ('"max_tokens": 0', "max_tokens"),
    ('"max_tokens": 1' + "0" * 40, "max_tokens"),
    ('"temperature": NaN', "temperature"),
    ('"temperature": "nan"', "temperature"),
    ('"temperature": Infinity', "temperature"),
    ('"temperature": -0.5', "temperature"),
    ('"top_p": NaN, "temperature": 1.0', "top_p"),
    ('"top_p": 1.5', "top_p"),
    ('"n": 0', "n"),
    ('"n": 100000000000000000000', "n"),
    ('"stop": ["' + "s" * 2000 + '"]', "stop"),
    ('"stop": ' + json.dumps(["a"] * 17), "stop"),
    ('"stream": "yes"', "stream"),
]


def test_bad_fields_get_400_while_good_requests_run_on(server, local):
    base, model = server["base"], server["model"]
    before = _metrics(base)
    prompt, n = PROMPTS[3], 240
    stream_out, first = {}, threading.Event()
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    streamer = threading.Thread(target=_read_stream, args=(base, body, stream_out, first))
    plain = {}
    plain_t = threading.Thread(target=lambda: plain.update(r=_post(base, {
        "model": model, "prompt": PROMPTS[2], "max_tokens": 120, "temperature": 0})))
    streamer.start()
    assert first.wait(30)  # the good stream is running
    plain_t.start()
    answered = []  # (case index, time the 400 came back)
    lock = threading.Lock()

    def hammer(cases):
        with httpx.Client(timeout=30) as h:
            for i in cases:
                raw = ('{"model": %s, "prompt": %s, ' % (json.dumps(model), json.dumps(PROMPTS[i % 4]))
                       + BAD_FIELDS[i][0] + "}").encode()
                r = h.post(base + "/v1/completions", content=raw, headers={"Content-Type": "application/json"})
                err = _error(r, 400)
                assert err["param"] == BAD_FIELDS[i][1], (BAD_FIELDS[i], err)
                assert err["type"] == "invalid_request_error"
                with lock:
                    answered.append((i, time.perf_counter()))

    idx = list(range(len(BAD_FIELDS)))
    workers = [threading.Thread(target=hammer, args=(idx[k::3],)) for k in range(3)]
    for w in workers:
        w.start()
    for w in workers + [streamer, plain_t]:
        w.join(60)
    assert sorted(i for i, _ in answered) == idx
    # They were answered while the good stream was still decoding (not before or after it).
    assert max(t for _, t in answered) < stream_out["end"], "the good stream ended before the bad requests"
    assert stream_out["status"] == 200
    text, finals = _stream_text(stream_out["events"])
    ref = alone(local, prompt, n)
    assert text == ref.text and finals == [ref.finish_reason]
    assert plain["r"].status_code == 200, plain["r"].text
    assert plain["r"].json()["choices"][0]["text"] == alone(local, PROMPTS[2], 120).text
    after = _metrics(base)
    assert after["sequences_failed"] == before["sequences_failed"]  # none reached the engine
    assert after["requests"] - before["requests"] == 2
    assert after["rejected_requests"] - before["rejected_requests"] == len(BAD_FIELDS)


DEEP = 100_000


@pytest.mark.parametrize("raw, status, param", [
    pytest.param(b"[" * DEEP + b"]" * DEEP, 400, None, id="array-100k-deep"),
    pytest.param(b'{"model": "m", "prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, None, id="field-100k-deep"),
    pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, 400, None, id="object-100k-deep"),
    pytest.param(b'{"model": "MODEL", "prompt": "\\ud800"}', 400, "prompt", id="lone-surrogate-prompt"),
    pytest.param(b'{"model": "MODEL", "prompt": ["ok", "x\\udfffy"]}', 400, "prompt", id="lone-surrogate-list"),
    pytest.param(b'{"model": "MODEL", "prompt": "x", "stop": "\\udc00"}', 400, "stop", id="lone-surrogate-stop"),
    pytest.param(b'{"model": "MODEL", "prompt": "x", "user": "\\ud83d"}', 400, "user", id="lone-surrogate-user"),
    pytest.param(b'{"model": "MODEL", "prompt": "\xff\xfe"}', 400, None, id="not-utf8"),
    pytest.param(b'{"model": "MODEL", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400, None,
                 id="5000-digit-int"),
    pytest.param(b"", 400, None, id="empty"),
    pytest.param(b'["model", "prompt"]', 400, None, id="not-an-object"),
])
def test_malformed_bodies_get_4xx_json(server, raw, status, param):
    raw = raw.replace(b"MODEL", server["model"].encode())
    err = _error(_post(server["base"], raw=raw), status)
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def test_lone_surrogate_in_chat_and_other_routes_are_json(server, local):
    base, model = server["base"], server["model"]
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800"}]}' % model.encode()
    assert _error(_post(base, raw=raw, path="/v1/chat/completions"), 400)["param"] == "messages"
    assert _error(httpx.get(base + "/v1/nowhere"), 404)["code"] == "not_found"
    assert _error(httpx.get(base + "/v1/completions"), 405)
    # A correctly paired surrogate (an emoji) is fine, and the server still answers normally.
    r = _post(base, raw=b'{"model": "%s", "prompt": "\\ud83d\\ude00 x", "max_tokens": 3, "temperature": 0}'
                          % model.encode())
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone(local, "\U0001f600 x", 3).text


def _rss_mb(pid) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(fh.read().split("VmRSS:")[1].split()[0]) / 1024
    except OSError:
        return None


def _small_latencies_during(base, model, big_request) -> tuple[object, list[float], float]:
    """Run `big_request()` in a thread; meanwhile send small completions one after another.
    Return (its result, the small requests' latencies that overlapped it, its duration)."""
    small = {"model": model, "prompt": "def f(x):", "max_tokens": 2, "temperature": 0}
    result, span = {}, {}

    def run():
        span["start"] = time.perf_counter()
        result["r"] = big_request()
        span["end"] = time.perf_counter()

    th = threading.Thread(target=run)
    lat = []
    with httpx.Client(timeout=60) as h:
        assert h.post(base + "/v1/completions", json=small).status_code == 200  # warm connection
        th.start()
        while th.is_alive():
            t0 = time.perf_counter()
            r = h.post(base + "/v1/completions", json=small)
            t1 = time.perf_counter()
            assert r.status_code == 200, r.text
            lat.append((t0, t1))
        th.join()
    overlapped = [t1 - t0 for t0, t1 in lat if t0 >= span["start"] and t1 <= span["end"]]
    return result["r"], overlapped, span["end"] - span["start"]


def test_a_20mb_prompt_does_not_stall_a_small_request(server):
    """Before: a 20 MB prompt was tokenized on the event loop (38 s on 2 CPUs here, +3 GB RSS) and
    every other request waited. Now the body cap answers 413 and small requests answer at once."""
    base, model = server["base"], server["model"]
    rss0 = _rss_mb(server["proc"].pid)
    body = json.dumps({"model": model, "prompt": "x = 1\n" * 3_500_000}).encode()  # ~24 MB
    assert len(body) > 20 * 2**20

    def chunks():  # chunked upload, no Content-Length: the cap is found while reading
        for i in range(0, len(body), 2**20):
            time.sleep(0.03)  # ~0.7 s in flight, so small requests overlap it
            yield body[i:i + 2**20]

    r, lat, took = _small_latencies_during(base, model, lambda: httpx.post(
        base + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}, timeout=60))
    err = _error(r, 413)
    assert err["code"] == "request_too_large" and f"--max-body-mb {BODY_CAP_MB}" in err["message"]
    assert len(lat) >= 3, (lat, took)
    assert max(lat) < 1.0, lat
    # With a Content-Length the 413 needs no reading at all.
    err = _error(_post(base, raw=body), 413)
    assert str(len(body)) in err["message"]
    rss1 = _rss_mb(server["proc"].pid)
    if rss0 is not None:
        assert rss1 - rss0 < 100, (rss0, rss1)  # the body was never held


def test_a_prompt_over_the_context_is_rejected_before_tokenizing(server):
    base, model = server["base"], server["model"]
    prompt = "x = 1\n" * 500_000  # 3 MB: under the body cap, thousands of times the 512-token context
    r, lat, took = _small_latencies_during(base, model, lambda: _post(base, {"model": model, "prompt": prompt}))
    err = _error(r, 400)
    assert err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert "characters" in err["message"]  # the cheap bound, not a token count
    assert took < 1.0, took
    assert max(lat, default=0) < 1.0, lat
    # Just over the bound in characters is rejected the same way; a prompt under it but over the
    # context in tokens is tokenized (off the event loop) and rejected by its token count.
    err = _error(_post(base, {"model": model, "messages": [{"role": "user", "content": "y" * 20_000}]},
                       path="/v1/chat/completions"), 400)
    assert err["param"] == "messages" and "characters" in err["message"]
    err = _error(_post(base, {"model": model, "prompt": "def f(x): return x\n" * 200}), 400)
    assert err["code"] == "context_length_exceeded" and "tokens" in err["message"]


def test_character_bound_never_rejects_a_prompt_that_fits(local):
    """The cheap pre-check is sound: no text has fewer tokens than len(text) / max_token_bytes."""
    import random

    from phi1.infer.server import max_token_bytes

    tok = local[1]
    per = max_token_bytes(tok)
    assert per is not None and per >= len("<|endoftext|>")
    rng = random.Random(0)
    vocab = [tok.decode([i]) for i in range(len(tok))]
    for _ in range(300):
        # Worst cases for the bound: texts made of the longest tokens.
        text = "".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        assert len(tok.encode(text)) * per >= len(text)
    longest = max(vocab, key=lambda t: len(t.encode()))
    assert len(tok.encode(longest * 50)) * per >= len(longest * 50)


# ---- faults inside the engine: one sequence fails, its neighbours finish --------------------------



def _submit_together(engine, tok, specs):
    """Submit all (prompt, SeqParams) in one call before the engine starts: one admission batch."""
    from phi1.infer.engine import Sequence

    sinks = [Collector() for _ in specs]
    engine.submit([Sequence(tok.encode(p), params, c) for (p, params), c in zip(specs, sinks)])
    engine.start()
    for c in sinks:
        assert c.done.wait(60), c.events
    return sinks


def _failed(c) -> str:
    from phi1.infer.engine import Failed

    assert len([e for e in c.events if isinstance(e, Failed)]) == 1 and isinstance(c.events[-1], Failed), c.events
    return c.events[-1].message


def _finished_likealone(c, local, prompt, n, **kw):
    ref = alone(local, prompt, n, **kw)
    assert c.text == ref.text and c.events[-1].finish_reason == ref.finish_reason


def test_bad_parameters_fail_only_their_sequence_at_admission(local):
    """Out-of-range values that get past an edge (the engine is a library too) fail alone: before,
    seed=2**64 raised inside admission, failed what ran and left later sequences with no answer."""
    from phi1.infer.engine import Engine, SeqParams

    model, tok = local
    engine = Engine(model, tok, max_batch=6)
    specs = [(PROMPTS[0], SeqParams(25)),
             (PROMPTS[1], SeqParams(25, temperature=1.0, seed=2**64)),
             (PROMPTS[2], SeqParams(25, top_k=10**30)),
             (PROMPTS[3], SeqParams(25, temperature=1.0, top_k=40, seed=7)),
             (PROMPTS[4], SeqParams(25, temperature=math.nan)),
             (PROMPTS[5], SeqParams(25))]
    try:
        sinks = _submit_together(engine, tok, specs)
        snap = engine.snapshot()
    finally:
        engine.shutdown()
    assert "seed" in _failed(sinks[1]) and "top_k" in _failed(sinks[2]) and "temperature" in _failed(sinks[4])
    _finished_likealone(sinks[0], local, PROMPTS[0], 25)
    _finished_likealone(sinks[3], local, PROMPTS[3], 25, temperature=1.0, top_k=40, seed=7)
    _finished_likealone(sinks[5], local, PROMPTS[5], 25)
    assert snap["sequences_failed"] == 3 and snap["sequences_finished"] == 3 and snap["active_sequences"] == 0


def test_faults_while_prefilling_sampling_or_detokenizing_one_sequence_fail_italone(local, monkeypatch):
    import phi1.infer.engine as eng
    from phi1.infer.engine import Engine, SeqParams

    model, tok = local
    bad_prompt = tok.encode("BOOM in prefill")
    real_prefill, real_sample, RealStream = eng.prefill, eng.sample_next, eng.TextStream
    marker_t = 0.625  # the temperature that marks the sequence whose sampling faults
    calls = {"marked": 0}

    def prefill(model_, prompts, pad, start_row=0):
        if bad_prompt in prompts:
            raise RuntimeError("injected prefill fault")
        return real_prefill(model_, prompts, pad, start_row=start_row)

    def sample_next(logits, temperature, top_k, top_p, generator=None, **kw):
        if bool((temperature == marker_t).any()):
            calls["marked"] += 1
            if calls["marked"] >= 3:  # mid-decode, not at once
                raise RuntimeError("injected sampling fault")
        return real_sample(logits, temperature, top_k, top_p, generator, **kw)

    class FaultyStream(RealStream):
        def push(self, toks, eos_id, max_new):
            if "<fault>" in self.stop and self.n_tokens >= 3:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
            return super().push(toks, eos_id, max_new)

    monkeypatch.setattr(eng, "prefill", prefill)
    monkeypatch.setattr(eng, "sample_next", sample_next)
    monkeypatch.setattr(eng, "TextStream", FaultyStream)
    engine = Engine(model, tok, max_batch=6)
    specs = [(PROMPTS[0], SeqParams(30)),
             ("BOOM in prefill", SeqParams(30)),
             (PROMPTS[2], SeqParams(30, temperature=0.9, seed=3)),
             (PROMPTS[3], SeqParams(30, stop=("<fault>",))),
             (PROMPTS[4], SeqParams(30, temperature=marker_t)),
             (PROMPTS[5], SeqParams(30))]
    try:
        sinks = _submit_together(engine, tok, specs)
        snap = engine.snapshot()
    finally:
        engine.shutdown()
    assert "injected prefill fault" in _failed(sinks[1])
    assert "injected detokenizer fault" in _failed(sinks[3]) and sinks[3].text  # it had been streaming
    assert "injected sampling fault" in _failed(sinks[4])
    _finished_likealone(sinks[0], local, PROMPTS[0], 30)
    _finished_likealone(sinks[2], local, PROMPTS[2], 30, temperature=0.9, seed=3)
    _finished_likealone(sinks[5], local, PROMPTS[5], 30)
    assert snap["sequences_failed"] == 3 and snap["sequences_finished"] == 3
    assert snap["prefill_batches"] == 5  # the failed batch of six was retried one sequence at a time


@contextlib.contextmanager
def _uvicorn(app):
    """Serve `app` over real HTTP on a free loopback port, in this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not server.started:
        assert th.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)


def test_a_request_that_faults_mid_decode_fails_alone_over_http(local, monkeypatch, tiny_model_dir):
    import phi1.infer.engine as eng
    from phi1.infer.engine import Engine
    from phi1.infer.server import ServeConfig, create_app

    class FaultyStream(eng.TextStream):
        def push(self, toks, eos_id, max_new):
            if "<fault>" in self.stop and self.n_tokens >= 4:
                raise RuntimeError("injected fault in this request")
            return super().push(toks, eos_id, max_new)

    monkeypatch.setattr(eng, "TextStream", FaultyStream)
    model, tok = local
    engine = Engine(model, tok, max_batch=4).start()
    app = create_app(engine, tok, "tiny", ServeConfig(model_dir=str(tiny_model_dir)))
    with _uvicorn(app) as base:
        good_out, first = {}, threading.Event()
        good = {"model": "tiny", "prompt": PROMPTS[4], "max_tokens": 240, "temperature": 0, "stream": True}
        streamer = threading.Thread(target=_read_stream, args=(base, good, good_out, first))
        streamer.start()
        assert first.wait(30)
        bad = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0, "stop": "<fault>"}
        err = _error(_post(base, bad), 500)
        assert err["type"] == "server_error" and "injected fault" in err["message"]
        bad_out = {}
        _read_stream(base, {**bad, "stream": True}, bad_out, threading.Event())
        assert bad_out["events"][-1] == "[DONE]"
        assert "injected fault" in json.loads(bad_out["events"][-2])["error"]["message"]
        # ... while the good stream, in the same batch all along, is still running: it ends unharmed.
        assert "end" not in good_out, "the good stream ended before the faulty requests ran"
        streamer.join(60)
        text, finals = _stream_text(good_out["events"])
        ref = alone(local, PROMPTS[4], 240)
        assert text == ref.text and finals == [ref.finish_reason]
        m = httpx.get(base + "/metrics.json").json()
        assert m["sequences_failed"] == 2 and m["sequences_finished"] == 1 and m["max_batch_occupancy"] >= 2


def test_a_server_bug_is_a_json_500_and_the_server_serves_on(local, tiny_model_dir):
    """What used to be a plain-text 500 (an exception escaping a handler) is OpenAI-shaped JSON."""
    from phi1.infer.engine import Engine
    from phi1.infer.server import ServeConfig, create_app

    model, tok = local

    class Flaky:  # the real tokenizer, except that one prompt crashes it (as a lone surrogate once did)
        def __getattr__(self, name):
            return getattr(tok, name)

        def encode_batch(self, texts):
            if "crash me" in texts:
                raise TypeError("TextEncodeInput must be Union[...]")
            return tok.encode_batch(texts)

    engine = Engine(model, tok, max_batch=2).start()
    app = create_app(engine, Flaky(), "tiny", ServeConfig(model_dir=str(tiny_model_dir)))
    with _uvicorn(app) as base:
        err = _error(_post(base, {"model": "tiny", "prompt": "crash me"}), 500)
        assert err["type"] == "server_error" and "TypeError" in err["message"]
        r = _post(base, {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone(local, PROMPTS[0], 5).text


# ---- startup ------------------------------------------------------------------------------------

def test_port_in_use_is_one_error_line_before_the_model_loads(tiny_model_dir, tmp_path):
    # Damaged weights: a server that loaded the model before taking the port would fail on them.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cmd = [sys.executable, "-m", "phi1", "serve", "--model", str(broken), "--device", "cpu", "--port"]
    env = {**os.environ, "PHI1_DEBUG": ""}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.perf_counter()
        r = subprocess.run(cmd + [str(port)], capture_output=True, text=True, timeout=60, env=env)
        took = time.perf_counter() - t0
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi1: error:"), r.stderr
    assert f"--port {port}" in lines[0] and "in use" in lines[0]
    assert r.stdout == ""
    assert took < 20, took
    # The control: on a free port the same directory fails on its weights, so above, the port came first.
    r = subprocess.run(cmd + [str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "model.safetensors" in r.stderr and "in use" not in r.stderr, r.stderr


def test_serve_config_checks_the_body_cap(tiny_model_dir):
    from phi1.errors import Phi1Error
    from phi1.infer.server import ServeConfig

    for bad in (0, -1, 1e9):
        with pytest.raises(Phi1Error, match="--max-body-mb"):
            ServeConfig(model_dir=str(tiny_model_dir), max_body_mb=bad).validate()
    ServeConfig(model_dir=str(tiny_model_dir), max_body_mb=0.5).validate()
