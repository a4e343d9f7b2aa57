"""`phi1 serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the continuous-batching engine.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(both with `stream: true` as server-sent events ending in `data: [DONE]`), GET /metrics.
Request handlers run on the event loop and only validate, enqueue and relay:
the model belongs to the engine thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves handler annotations from module globals

from phi1.errors import Phi1Error
from phi1.infer.engine import Delta, Engine, Failed, SeqParams, Sequence
from phi1.infer.protocol import (CHAT_STOP, APIError, ChatRequest, CompletionRequest, new_id, now,
                                 parse_request, render_chat, sse, usage)

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Settings of `phi1 serve` (see docs/infer.md)."""

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    max_batch_size: int = 8
    max_tokens_limit: int | None = None  # default: the model's context
    max_n: int = 16                     # choices per request (prompts x n)
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    log_level: str = "info"

    def validate(self) -> None:
        if not Path(self.model_dir, "config.json").exists():
            raise Phi1Error(f"--model {self.model_dir}: no config.json there; give a model directory")
        if not 0 <= self.port <= 65535:
            raise Phi1Error(f"--port {self.port}: must be 0..65535")
        if not 1 <= self.max_batch_size <= 1024:
            raise Phi1Error(f"--max-batch-size {self.max_batch_size}: must be 1..1024")
        if self.max_tokens_limit is not None and self.max_tokens_limit < 1:
            raise Phi1Error(f"--max-tokens-limit {self.max_tokens_limit}: must be at least 1")
        if self.max_n < 1:
            raise Phi1Error(f"--max-n {self.max_n}: must be at least 1")

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise Phi1Error(f"--api-key-env {self.api_key_env}: that environment variable is unset or empty; "
                            "export the key in it first")
        return key


class _Server:
    def __init__(self, engine: Engine, tokenizer, model_id: str, cfg: ServeConfig, api_key: str | None):
        self.engine, self.tok, self.model_id, self.cfg, self.api_key = engine, tokenizer, model_id, cfg, api_key
        self.ctx = engine.ctx
        self.max_tokens_limit = cfg.max_tokens_limit or self.ctx
        self.rejected = 0

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
            raise APIError(404, f"model: {name!r} is not served here; this server serves {self.model_id!r}",
                           "model", "model_not_found")

    def build(self, req, chat: bool) -> tuple[list[str], list[list[int]], list[Sequence], asyncio.Queue]:
        """Validate a parsed request against the model and make its sequences (not yet submitted)."""
        self.check_model(req.model)
        if chat:
            prompts = [render_chat(req.messages)]
        else:
            if req.echo:
                raise APIError(400, "echo: echo=true is not supported by this server; leave it out", "echo",
                               "unsupported_parameter")
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if not prompts:
                raise APIError(400, "prompt: an empty list; give a string or a list of strings", "prompt")
        total = len(prompts) * req.n
        if total > self.cfg.max_n:
            raise APIError(400, f"n: {req.n} choices x {len(prompts)} prompts = {total}; this server allows at "
                                f"most {self.cfg.max_n} per request", "n")
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_tokens_limit
        if max_tokens > self.max_tokens_limit:
            raise APIError(400, f"max_tokens: {max_tokens} is above this server's limit of "
                                f"{self.max_tokens_limit}", "max_tokens")
        encoded = self.tok.encode_batch(prompts)
        field = "messages" if chat else "prompt"
        for ids in encoded:
            if not ids:
                raise APIError(400, f"{field}: encodes to zero tokens; give some text", field)
            if len(ids) >= self.ctx:
                raise APIError(400, f"{field}: {len(ids)} tokens, but the model's context is {self.ctx} "
                                    "(and the completion needs room); shorten it", field,
                               "context_length_exceeded")
        stop = req.stop_list() + ([CHAT_STOP] if chat else [])
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        seqs = []
        for pi, ids in enumerate(encoded):
            for j in range(req.n):
                index = pi * req.n + j
                params = SeqParams(max_tokens, req.temperature, req.top_p, max(req.top_k, 0), tuple(stop),
                                   None if req.seed is None else req.seed + j)

                def sink(ev, index=index):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, ev))

                seqs.append(Sequence(ids, params, sink))
        return prompts, encoded, seqs, queue


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

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models(request: Request):
        srv.check_auth(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "phi1", "max_model_len": srv.ctx}]}

    @app.get("/metrics")
    async def metrics(request: Request):
        srv.check_auth(request)
        snap = engine.snapshot()
        snap["rejected_requests"] = srv.rejected
        snap["max_batch_size"] = engine.max_batch
        return snap

    async def handle(request: Request, chat: bool):
        srv.check_auth(request)
        req = parse_request(await request.body(), ChatRequest if chat else CompletionRequest)
        prompts, encoded, seqs, queue = srv.build(req, chat)
        engine.submit(seqs)
        meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": model_id}
        prompt_tokens = sum(len(ids) for ids in encoded)
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


def _choice(chat: bool, index: int, text: str, finish: str | None, stream: bool) -> dict:
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    key = "delta" if stream else "message"
    body = {"content": text} if stream else {"role": "assistant", "content": text}
    return {"index": index, key: body, "logprobs": None, "finish_reason": finish}


async def _collect(engine, request, seqs, queue, meta, chat, prompt_tokens):
    from fastapi.responses import JSONResponse

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
    finally:
        # Runs when the client disconnects too (the response task is cancelled): free the slots.
        if pending:
            engine.cancel(seqs)


def serve(cfg: ServeConfig) -> None:
    """Load the model, start the engine and serve until interrupted."""
    import uvicorn

    from phi1.model import load_for_inference
    from phi1.model.create import check_tokenizer_fits

    cfg.validate()
    api_key = cfg.api_key()
    check_tokenizer_fits(cfg.model_dir)
    model, tok = load_for_inference(cfg.model_dir, cfg.device, cfg.dtype)
    engine = Engine(model, tok, max_batch=cfg.max_batch_size, compile=cfg.compile).start()
    model_id = Path(cfg.model_dir).resolve().name
    app = create_app(engine, tok, model_id, cfg, api_key)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without --api-key-env: anyone who can reach this port can use it", cfg.host)
    print(f"phi1 serve: {model_id} on http://{cfg.host}:{cfg.port}/v1 (batch {cfg.max_batch_size}, "
          f"{model.lm_head.weight.device}, {model.lm_head.weight.dtype}, auth {'on' if api_key else 'off'})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
