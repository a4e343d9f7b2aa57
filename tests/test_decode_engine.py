"""The continuous-batching engine and the decode kernels, in-process on the tiny model."""

from __future__ import annotations

import time

import pytest

from serve_support import Collector, fail_decode_step

from phi1.infer.engine import Engine, Failed, SeqParams, Sequence
from phi1.infer.generate import generate
from phi1.infer.textstream import TextStream

PROMPTS = ["def fibonacci(n):\n    ", "import json\n\nclass Encoder:", "x = [1, 2, 3]\nfor", "# sort a list\n",
           "from email import", "    return"]






def _run(engine, tok, prompts, n, stagger=0.0, **kw):
    sinks = []
    for p in prompts:
        c = Collector()
        engine.submit([Sequence(tok.encode(p), SeqParams(n, **kw), c)])
        sinks.append(c)
        time.sleep(stagger)
    for c in sinks:
        assert c.done.wait(60)
    return sinks


@pytest.mark.parametrize("mode", ["eager", "full"])
def test_staggered_requests_join_the_batch_and_match_generate(local, mode):
    model, tok = local
    refs = generate(model, tok, PROMPTS, max_new_tokens=30, batch_size=1)
    engine = Engine(model, tok, max_batch=4, step_mode=mode).start()
    try:
        # 6 prompts, 4 slots, arriving while others decode: slots are reused and rows join mid-flight.
        sinks = _run(engine, tok, PROMPTS, 30, stagger=0.01)
        snap = engine.snapshot()
    finally:
        engine.shutdown()
    for ref, c in zip(refs, sinks):
        assert c.text == ref.text
        assert c.events[-1].finish_reason == ref.finish_reason
        assert c.events[-1].completion_tokens == ref.completion_tokens
    assert snap["max_batch_occupancy"] >= 2 and snap["sequences_finished"] == len(PROMPTS)
    assert snap["active_sequences"] == 0 and snap["prefill_batches"] >= 2


def test_generate_full_cache_step_equals_eager(local):
    from phi1.infer.generate import SamplingParams, generate_ids

    model, tok = local
    ids = tok.encode_batch(PROMPTS[:3])
    eager = generate_ids(model, ids, SamplingParams(max_new_tokens=25), tok.eos_id)
    from phi1.infer.decode import DecodeStep

    model._phi1_decode_step = DecodeStep(model, mode="full")  # what decode_step_for reuses
    try:
        full = generate_ids(model, ids, SamplingParams(max_new_tokens=25), tok.eos_id, compile=False)
    finally:
        model._phi1_decode_step = None
    assert full == eager


def test_engine_failure_fails_running_sequences_and_keeps_serving(local):
    model, tok = local
    engine = Engine(model, tok, max_batch=2).start()
    fail_decode_step(engine, 3, "device fell over")
    try:
        [bad] = _run(engine, tok, PROMPTS[:1], 20)
        assert isinstance(bad.events[-1], Failed) and "device fell over" in bad.events[-1].message
        [good] = _run(engine, tok, PROMPTS[:1], 20)
    finally:
        engine.shutdown()
    assert good.text == generate(model, tok, PROMPTS[:1], max_new_tokens=20)[0].text
    assert engine.snapshot()["sequences_failed"] == 1


def test_cancel_frees_the_slot(local):
    model, tok = local
    engine = Engine(model, tok, max_batch=1).start()
    try:
        c = Collector()
        seq = Sequence(tok.encode(PROMPTS[3]), SeqParams(400), c)
        engine.submit([seq])
        deadline = time.time() + 20
        while not c.events and time.time() < deadline:
            time.sleep(0.005)
        engine.cancel([seq])
        # The only slot frees up, so the next request runs.
        [nxt] = _run(engine, tok, PROMPTS[:1], 5)
        snap = engine.snapshot()
    finally:
        engine.shutdown()
    assert nxt.text == generate(model, tok, PROMPTS[:1], max_new_tokens=5)[0].text
    assert snap["sequences_cancelled"] == 1 and not c.done.is_set()
    assert snap["tokens_generated"] < 400 + 5


class _CharTok:
    """Each id is one byte; decoding invalid UTF-8 yields U+FFFD like a byte-level BPE does."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_partial_stops_and_characters():
    s = TextStream(_CharTok(), stop=["STOP"])
    out = [s.push(list(b"abc ST"), None, 100)]
    assert out == ["abc "]                       # "ST" might begin "STOP"
    out.append(s.push(list(b"AR \xc3"), None, 100))  # half of "é": held back
    assert out[-1] == "STAR "
    out.append(s.push(list(b"\xa9 xSTOPyz"), None, 100))
    assert "".join(out) == "abc STAR é x" and s.finish_reason == "stop"
    assert s.n_tokens == len("abc STAR é x".encode())  # tokens of the returned text, as generate() counts
    s2 = TextStream(_CharTok())
    assert s2.push(list(b"hello"), ord("l"), 100) == "he" and s2.finish_reason == "stop"  # EOS ends it
    s3 = TextStream(_CharTok())
    assert s3.push(list(b"hello"), None, 3) == "hel" and s3.finish_reason == "length"
