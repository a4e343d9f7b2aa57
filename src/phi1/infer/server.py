"""`phi1 serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the continuous-batching engine.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(both with `stream: true` as server-sent events ending in `data: [DONE]`), GET /metrics.
Request handlers run on the event loop and only read the body (capped), enqueue and relay;
parsing, validation and tokenization run in a worker thread, and the model belongs to the
engine thread, so one request's size or content never stalls another's.
Every error is answered as OpenAI-shaped JSON (protocol.APIError).
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import errno
import hmac
import json
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request  # at module level: FastAPI resolves handler annotations from module globals

from phi1.errors import Phi1Error
from phi1.infer.settings import ServeConfig  # noqa: F401 (the server's config; light, no fastapi)
from phi1.infer.textstream import ids_for_prefix
from phi1.infer.protocol import (APIError, ChatRequest, CompletionRequest, chat_messages, new_id, now,
                                 parse_request, sse, usage)

if TYPE_CHECKING:  # torch comes with the engine: imported when the model loads, after the port is bound
    from phi1.infer.engine import Engine, SeqParams, Sequence

log = logging.getLogger(__name__)


def max_token_bytes(tokenizer) -> int | None:
    """The most UTF-8 bytes of text any one token can stand for, when that bounds the token count of a
    text from below (a byte-level BPE with no normalizer and no unknown token, like phi-1's): then
    `tokens >= len(text) / max_token_bytes`. None when the tokenizer gives no such guarantee."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        return None
    try:
        spec = json.loads(backend.to_str())
        model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
        if spec.get("normalizer") is not None or model.get("type") != "BPE" or model.get("unk_token") \
                or decoder.get("type") != "ByteLevel":
            return None
        ids = sorted(backend.get_vocab(with_added_tokens=True).values())
        texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
        # An id that is part of a UTF-8 character decodes to U+FFFD (3 bytes): an overestimate, still a bound.
        return max(len(t.encode("utf-8", "surrogatepass")) for t in texts) or None
    except Exception:  # an unusual tokenizer: just count tokens
        log.debug("no character bound for this tokenizer", exc_info=True)
        return None


@dataclass
class _Prepared:
    """A validated request, tokenized (made in a worker thread)."""

    req: object
    encoded: list[list[int]]
    params: SeqParams  # for choice 0 of each prompt; choice j adds j to the seed
    texts: list[str] = dataclasses.field(default_factory=list)  # the prompts as text (for echo)


class _Server:
    def __init__(self, engine: Engine, tokenizer, model_id: str, cfg: ServeConfig, api_key: str | None):
        self.engine, self.tok, self.model_id, self.cfg, self.api_key = engine, tokenizer, model_id, cfg, api_key
        self.ctx = engine.ctx
        self.max_tokens_limit = cfg.max_tokens_limit or self.ctx
        self.max_body = int(cfg.max_body_mb * 2**20)
        # A prompt longer than this many characters has at least ctx tokens, whatever it says: it is
        # rejected before tokenizing (tokenizing costs time proportional to its length).
        per_token = max_token_bytes(tokenizer)
        self.max_prompt_chars = (self.ctx - 1) * per_token if per_token else None
        self.rejected = 0
        from phi1.chat import PHI3_TEMPLATE

        # The model directory's chat template (phi-3's for a directory without one); a reply ends at
        # the template's end-of-turn marker (phi-3: <|end|>) or EOS.
        self.chat = tokenizer.chat(default=PHI3_TEMPLATE)
        self.chat_stop = self.chat.end_marker()

    def check_auth(self, request) -> None:
        if self.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", type="authentication_error")

    def check_model(self, name: str) -> None:
        if name not in (self.model_id, self.cfg.model_dir, str(Path(self.cfg.model_dir).resolve())):
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise APIError(404, f"model: {shown!r} is not served here; this server serves {self.model_id!r}",
                           "model", "model_not_found")

    def prepare(self, raw: bytes, chat: bool) -> _Prepared:
        """Parse, validate and tokenize one request body. Runs in a worker thread, never on the event loop;
        raises APIError for anything the client got wrong, before the costly steps where it can."""
        from phi1.infer.engine import SeqParams

        req = parse_request(raw, ChatRequest if chat else CompletionRequest)
        self.check_model(req.model)
        if chat:
            from phi1.chat import TemplateError

            try:
                prompts = [self.chat.render(chat_messages(req.messages), add_generation_prompt=True)]
            except TemplateError as exc:
                raise APIError(400, f"messages: {exc}", "messages") from None
        else:
            if req.stream and (req.echo or req.logprobs is not None):
                raise APIError(400, "stream: echo and logprobs are answered only without streaming; set "
                                    "stream to false", "stream", "unsupported_parameter")
            if req.max_tokens == 0 and not req.echo:
                raise APIError(400, "max_tokens: 0 generates nothing; it is allowed only with echo=true (to score "
                                    "the prompt)", "max_tokens")
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if not prompts:
                raise APIError(400, "prompt: an empty list; give a string or a list of strings", "prompt")
            if isinstance(prompts[0], int) or isinstance(prompts[0], list):
                return self._prepare_token_prompts(req, [prompts] if isinstance(prompts[0], int) else prompts)
        max_tokens = self._limits(req, len(prompts))
        stop = req.stop_list() + ([self.chat_stop] if chat and self.chat_stop else [])
        field = "messages" if chat else "prompt"
        for text in prompts:
            if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
                raise APIError(400, f"{field}: {len(text)} characters is more than the model's context of "
                                    f"{self.ctx} tokens can hold (at most {self.max_prompt_chars} characters); "
                                    "shorten it", field, "context_length_exceeded")
        encoded = self.tok.encode_batch(prompts)  # releases the GIL while it works
        for ids in encoded:
            if not ids:
                raise APIError(400, f"{field}: encodes to zero tokens; give some text", field)
            if len(ids) >= self.ctx:
                raise APIError(400, f"{field}: {len(ids)} tokens, but the model's context is {self.ctx} "
                                    "(and the completion needs room); shorten it", field,
                               "context_length_exceeded")
        params = SeqParams(max_tokens, req.temperature, req.top_p, max(req.top_k, 0), tuple(stop), req.seed)
        return _Prepared(req, encoded, params, prompts)

    def _limits(self, req, n_prompts: int) -> int:
        """The request's max_tokens, after checking it and prompts x n against the server's limits."""
        total = n_prompts * req.n
        if total > self.cfg.max_n:
            raise APIError(400, f"n: {req.n} choices x {n_prompts} prompts = {total}; this server allows at "
                                f"most {self.cfg.max_n} per request", "n")
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_tokens_limit
        if max_tokens > self.max_tokens_limit:
            raise APIError(400, f"max_tokens: {max_tokens} is above this server's limit of "
                                f"{self.max_tokens_limit}", "max_tokens")
        return max_tokens

    def _prepare_token_prompts(self, req, arrays: list[list[int]]) -> _Prepared:
        """Prompts given as token ids (OpenAI's token-array form): checked against the vocabulary and context."""
        from phi1.infer.engine import SeqParams

        vocab = len(self.tok)
        for arr in arrays:
            if not arr:
                raise APIError(400, "prompt: an empty token list; give at least one token id", "prompt")
            bad = next((t for t in arr if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(400, f"prompt: token id {bad} is outside this model's vocabulary (0..{vocab - 1})",
                               "prompt")
            if len(arr) >= self.ctx + (1 if req.max_tokens == 0 else 0):
                raise APIError(400, f"prompt: {len(arr)} tokens, but the model's context is {self.ctx}; shorten it",
                               "prompt", "context_length_exceeded")
        max_tokens = self._limits(req, len(arrays))
        params = SeqParams(max_tokens, req.temperature, req.top_p, max(req.top_k, 0), tuple(req.stop_list()),
                           req.seed)
        return _Prepared(req, [list(a) for a in arrays], params, [self.tok.decode(a) for a in arrays])

    def sequences(self, prep: _Prepared) -> tuple[list[Sequence], asyncio.Queue]:
        """Make a prepared request's sequences (not yet submitted); on the event loop."""
        from phi1.infer.engine import SeqParams, Sequence

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        n, p = prep.req.n, prep.params
        seqs = []
        for pi, ids in enumerate(prep.encoded):
            for j in range(n):
                index = pi * n + j
                params = SeqParams(p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.stop,
                                   None if p.seed is None else p.seed + j)

                def sink(ev, index=index):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, ev))

                seqs.append(Sequence(ids, params, sink))
        return seqs, queue

    async def read_body(self, request) -> bytes:
        """The request body, or APIError(413) as soon as it is known to be over --max-body-mb
        (the server discards the rest of an oversized upload without keeping it)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self.too_large(int(declared))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self.too_large(size, at_least=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def too_large(self, size: int, at_least: bool = False) -> APIError:
        return APIError(413, f"request body: {'over ' if at_least else ''}{size} bytes is more than this "
                             f"server's limit of {self.max_body} bytes (--max-body-mb {self.cfg.max_body_mb:g}); "
                             "send a shorter prompt", None, "request_too_large")


def create_app(engine: Engine, tokenizer, model_id: str, cfg: ServeConfig, api_key: str | None = None):
    """The FastAPI application; the engine must be started (the lifespan starts and stops it)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    srv = _Server(engine, tokenizer, model_id, cfg, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.shutdown()

    app = FastAPI(title="phi1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        srv.rejected += 1
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        err = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None,
                       "not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        # A bug, not the client's fault; the traceback goes to the server log (Starlette re-raises it).
        err = APIError(500, f"internal server error: {type(exc).__name__}: {str(exc)[:300]}", None,
                       "internal_error", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models(request: Request):
        srv.check_auth(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "phi1", "max_model_len": srv.ctx}]}

    def snapshot() -> dict:
        snap = engine.snapshot()
        snap["rejected_requests"] = srv.rejected
        snap["max_batch_size"] = engine.max_batch
        return snap

    @app.get("/metrics")
    async def metrics(request: Request):
        """Prometheus' text exposition format (what a scraper reads)."""
        from fastapi.responses import PlainTextResponse

        srv.check_auth(request)
        return PlainTextResponse(prometheus_text(snapshot(), model_id),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/metrics.json")
    async def metrics_json(request: Request):
        """The same numbers as one JSON object (what bench/serve_load.py reads)."""
        srv.check_auth(request)
        return snapshot()

    async def handle(request: Request, chat: bool):
        from starlette.concurrency import run_in_threadpool

        srv.check_auth(request)
        raw = await srv.read_body(request)
        prep = await run_in_threadpool(srv.prepare, raw, chat)
        del raw
        req = prep.req
        meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": model_id}
        prompt_tokens = sum(len(ids) for ids in prep.encoded)
        scored = not chat and (req.echo or req.logprobs is not None)
        if not chat and req.max_tokens == 0:  # echo only: score the prompts, generate nothing
            return await _score_only(engine, srv.tok, prep, meta, prompt_tokens)
        seqs, queue = srv.sequences(prep)
        engine.submit(seqs)
        if scored:
            body = await _collect(engine, request, seqs, queue, meta, chat, prompt_tokens)
            if isinstance(body, dict):
                await _add_logprobs(engine, srv.tok, prep, seqs, body)
            return body
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(engine, seqs, queue, meta, chat, prompt_tokens, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _collect(engine, request, seqs, queue, meta, chat, prompt_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


# name in the JSON snapshot -> (Prometheus name, type, help)
_PROMETHEUS = {
    "requests": ("phi1_requests_total", "counter", "Requests accepted by the engine."),
    "rejected_requests": ("phi1_rejected_requests_total", "counter", "Requests answered with an error status."),
    "sequences": ("phi1_sequences_total", "counter", "Sequences (prompt x choice) submitted."),
    "sequences_finished": ("phi1_sequences_finished_total", "counter", "Sequences that finished."),
    "sequences_cancelled": ("phi1_sequences_cancelled_total", "counter", "Sequences cancelled (client gone)."),
    "sequences_failed": ("phi1_sequences_failed_total", "counter", "Sequences that failed."),
    "prompt_tokens": ("phi1_prompt_tokens_total", "counter", "Prompt tokens prefilled."),
    "tokens_generated": ("phi1_generation_tokens_total", "counter", "Tokens generated."),
    "prefill_batches": ("phi1_prefill_batches_total", "counter", "Prefill batches run."),
    "decode_steps": ("phi1_decode_steps_total", "counter", "Batched decode steps run."),
    "active_sequences": ("phi1_active_sequences", "gauge", "Sequences holding a cache slot now."),
    "waiting_sequences": ("phi1_waiting_sequences", "gauge", "Sequences waiting for a slot now."),
    "max_batch_size": ("phi1_max_batch_size", "gauge", "Cache slots (--max-batch-size)."),
    "max_batch_occupancy": ("phi1_max_batch_occupancy", "gauge", "Most slots ever in use at once."),
    "mean_batch_size": ("phi1_mean_batch_size", "gauge", "Mean sequences per decode step."),
    "decode_tokens_per_second": ("phi1_decode_tokens_per_second", "gauge",
                                 "Tokens per second of decode-step time."),
}


def prometheus_text(snap: dict, model_id: str) -> str:
    """A metrics snapshot in Prometheus' text exposition format (version 0.0.4), labelled with the model."""
    label = 'model="' + model_id.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    lines = []
    for key, (name, kind, text) in _PROMETHEUS.items():
        if key in snap:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {float(snap[key])!r}"]
    hist = snap.get("batch_size_histogram") or {}
    name = "phi1_decode_steps_by_batch_size_total"
    lines += [f"# HELP {name} Decode steps run with this many sequences in the batch.", f"# TYPE {name} counter"]
    lines += [f'{name}{{{label},batch_size="{k}"}} {float(v)!r}' for k, v in hist.items()]
    return "\n".join(lines) + "\n"


def _choice(chat: bool, index: int, text: str, finish: str | None, stream: bool) -> dict:
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    key = "delta" if stream else "message"
    body = {"content": text} if stream else {"role": "assistant", "content": text}
    return {"index": index, key: body, "logprobs": None, "finish_reason": finish}


def _logprobs_block(tok, ids: list[int], token_lps: list, top: list, first: int, text_start: int = 0) -> dict:
    """OpenAI's legacy `logprobs` object for ids[first:]: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, offsets, at = [], [], text_start
    for t in ids[first:]:
        piece = tok.decode([t])
        tokens.append(piece)
        offsets.append(at)
        at += len(piece)
    tops = [None if alts is None else {tok.decode([i]): v for i, v in alts} for alts in top[first:]]
    return {"tokens": tokens, "token_logprobs": token_lps[first:], "top_logprobs": tops, "text_offset": offsets}


async def _scores(engine, ids: list[int], k: int):
    try:
        return await asyncio.wrap_future(engine.score(ids, k))
    except Exception as exc:  # the engine could not score: this request fails, the server goes on
        raise APIError(500, f"scoring the tokens failed: {type(exc).__name__}: {exc}", None, "engine_error",
                       type="server_error") from None


async def _score_only(engine, tok, prep, meta, prompt_tokens) -> dict:
    """echo with max_tokens 0: each prompt back, with the logprob of every token given the ones before it."""
    req = prep.req
    choices = []
    for pi, ids in enumerate(prep.encoded):
        logprobs = None
        if req.logprobs is not None:  # echo alone needs no forward pass
            lps, top = await _scores(engine, ids, req.logprobs)
            logprobs = _logprobs_block(tok, ids, lps, top, 0)
        for j in range(req.n):  # the n choices of one prompt are the same text
            choices.append({"index": pi * req.n + j, "text": prep.texts[pi],
                            "logprobs": logprobs, "finish_reason": "length"})
    return {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"],
            "choices": choices, "usage": usage(prompt_tokens, 0)}


async def _add_logprobs(engine, tok, prep, seqs, body: dict) -> None:
    """Fill each choice's `logprobs` (and, with echo, put the prompt before its text) from one scoring pass over
    prompt + completion: the logprob of every generated token under the model, and the top alternatives."""
    req, k = prep.req, prep.req.logprobs or 0
    for choice in body["choices"]:
        index = choice["index"]
        pi = index // req.n
        prompt = prep.encoded[pi]
        gen = ids_for_prefix(tok, list(seqs[index].stream.ids), choice["text"]) if seqs[index].stream else []
        ids = prompt + gen
        first = 0 if req.echo else len(prompt)
        if req.echo:
            choice["text"] = prep.texts[pi] + choice["text"]
        if req.logprobs is not None:
            if len(ids) > engine.ctx:
                ids = ids[: engine.ctx]
            lps, top = await _scores(engine, ids, k)
            # offsets count from the start of the prompt text, as OpenAI's do
            choice["logprobs"] = _logprobs_block(tok, ids, lps, top, first, 0 if req.echo else len(prep.texts[pi]))


async def _collect(engine, request, seqs, queue, meta, chat, prompt_tokens):
    from fastapi.responses import JSONResponse

    from phi1.infer.engine import Failed

    n = len(seqs)
    texts, reasons, counts = [""] * n, [None] * n, [0] * n
    pending = set(range(n))
    try:
        while pending:
            try:
                index, ev = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)  # nobody reads it; the finally cancels the work
                continue
            if isinstance(ev, Failed):
                raise APIError(500, ev.message, None, "engine_error", type="server_error")
            texts[index] += ev.text
            counts[index] = ev.completion_tokens
            if ev.finish_reason is not None:
                reasons[index] = ev.finish_reason
                pending.discard(index)
    finally:
        if pending:
            engine.cancel(seqs)
    body = {"id": meta["id"], "object": "chat.completion" if chat else "text_completion",
            "created": meta["created"], "model": meta["model"],
            "choices": [_choice(chat, i, texts[i], reasons[i], False) for i in range(n)],
            "usage": usage(prompt_tokens, sum(counts))}
    return body


async def _stream(engine, seqs, queue, meta, chat, prompt_tokens, include_usage):
    from phi1.infer.engine import Delta, Failed

    n = len(seqs)
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"]}
    pending = set(range(n))
    counts = [0] * n
    try:
        if chat:
            for i in range(n):
                first = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}
                yield sse({**head, "choices": [first]})
        while pending:
            index, ev = await queue.get()
            if isinstance(ev, Failed):
                yield sse({"error": APIError(500, ev.message, None, "engine_error", type="server_error").body()
                           ["error"]})
                yield sse("[DONE]")
                return
            assert isinstance(ev, Delta)
            counts[index] = ev.completion_tokens
            if ev.finish_reason is not None:
                pending.discard(index)
            yield sse({**head, "choices": [_choice(chat, index, ev.text, ev.finish_reason, True)]})
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage(prompt_tokens, sum(counts))})
        yield sse("[DONE]")
    except Exception as exc:  # the headers are sent: report it in the stream, as a decode failure is
        log.exception("streaming a response failed")
        yield sse({"error": APIError(500, f"internal server error: {type(exc).__name__}: {str(exc)[:300]}", None,
                                     "internal_error", type="server_error").body()["error"]})
        yield sse("[DONE]")
    finally:
        # Runs when the client disconnects too (the response task is cancelled): free the slots.
        if pending:
            engine.cancel(seqs)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (not yet listen on) host:port, or raise Phi1Error saying why not (a port in use, ...)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise Phi1Error(f"--host {host}: cannot resolve it ({exc.strerror}); give an IP address such as "
                        "127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does; not a port in use
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Phi1Error(f"--port {port}: {where} is already in use (another server?); stop it or pick "
                            "another --port") from None
        if exc.errno == errno.EACCES:
            raise Phi1Error(f"--port {port}: not allowed to bind {where} (ports below 1024 need privileges); "
                            "pick a port of 1024 or more") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise Phi1Error(f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
        raise Phi1Error(f"--host {host} --port {port}: cannot bind {where}: {exc.strerror}") from None
    return sock


def serve(cfg: ServeConfig) -> None:
    """Load the model, start the engine and serve until interrupted."""
    cfg.validate()
    api_key = cfg.api_key()
    # Take the port before importing torch and loading the model (slow): a port in use is one error
    # line, at once, and nothing can grab the port meanwhile. It only listens once uvicorn serves.
    sock = bind_socket(cfg.host, cfg.port)
    try:
        import uvicorn

        from phi1.infer.engine import Engine
        from phi1.model import load_for_inference
        from phi1.model.create import check_tokenizer_fits

        check_tokenizer_fits(cfg.model_dir)
        model, tok = load_for_inference(cfg.model_dir, cfg.device, cfg.dtype, quantize=cfg.quantize)
        engine = Engine(model, tok, max_batch=cfg.max_batch_size, compile=cfg.compile)
        # Compile every bucket's graph before the socket listens, so /health answers only when ready.
        n_graphs = engine.warmup()
        if n_graphs:
            print(f"phi1 serve: compiled {n_graphs} decode graphs", file=sys.stderr, flush=True)
        engine.start()
        model_id = Path(cfg.model_dir).resolve().name
        app = create_app(engine, tok, model_id, cfg, api_key)
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            log.warning("serving on %s without --api-key-env: anyone who can reach this port can use it",
                        cfg.host)
        port = sock.getsockname()[1]
        print(f"phi1 serve: {model_id} on http://{cfg.host}:{port}/v1 (batch {cfg.max_batch_size}, "
              f"{model.lm_head.weight.device}, {model.lm_head.weight.dtype}, auth {'on' if api_key else 'off'}, "
              f"body limit {cfg.max_body_mb:g} MiB)", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, host=cfg.host, port=port, log_level=cfg.log_level,
                                timeout_graceful_shutdown=5)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down gracefully (as uvicorn.run)
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
