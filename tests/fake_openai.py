"""A small OpenAI-compatible HTTP server for tests and benchmarks, with fault injection.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to serve
`POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` on
127.0.0.1, answers with deterministic text, and can misbehave on a schedule.

Use it in a test (the server runs on its own event loop in a daemon thread):

    from fake_openai import FakeOpenAI

    with FakeOpenAI(faults=["429", "500", None, "hang"], retry_after=0.05) as srv:
        client = LLMClient(srv.url, model="fake")        # srv.url == "http://127.0.0.1:PORT/v1"
        ...
        srv.max_in_flight      # highest number of requests being handled at once
        srv.requests           # every request received, in arrival order (list of Received)
        srv.ok_requests()      # the ones answered 200 with a usable completion
        srv.prompt_of(req)     # the prompt text of a request (chat: the last message's content)

Or in another process (benchmarks, subprocess tests):

    python tests/fake_openai.py --port 0 [--latency 0.0]    # prints "READY http://127.0.0.1:PORT/v1"

Faults (strings; `None` or "ok" means a normal answer):

    "429"        429 Too Many Requests with a `Retry-After: <retry_after>` header
    "500"/"503"  that server error status with a JSON error body
    "400"/"401"  a client error (not retryable)
    "hang"       read the request, then send nothing for `hang_seconds` (past the client timeout)
    "drop"       read the request, then close the connection without a response
    "malformed"  200 with a body that is not JSON
    "empty"      200 with `"choices": []`

How faults are chosen for each request, first match wins:
  1. `fault_fn(index, body)` if given: returns a fault string or None (index = arrival number, from 0);
  2. otherwise the `faults` list is consumed in order, one entry per request; when it runs out,
     requests are answered normally.
`set_faults(list)` replaces the schedule at run time (thread-safe).

Gating (for deterministic kill tests): `gate_after=K` answers the first K requests that would
succeed and holds every later one until `open_gate()` is called (or the server stops), so a
test can wait for K records on disk and kill a client while it has requests in flight.

The answer text is `responder(body)` if given, else a deterministic function of the prompt
and model ("Echo <sha8>: <first words of prompt>"). Usage counts words (prompt/completion).
Optional `api_key`: requests whose `Authorization` is not `Bearer <api_key>` get 401.
`echo_auth=True` makes every error body repeat the request's Authorization header, like a
careless proxy would: a test of the client's key scrubbing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["FakeOpenAI", "Received", "default_text"]


@dataclass
class Received:
    """One request as the server saw it."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (or None)
    fault: str | None  # the fault applied, None for a normal answer
    status: int | None = None  # HTTP status sent (None: hung or dropped)
    t_start: float = 0.0
    t_end: float = 0.0
    completion: str | None = None  # the text answered, for 200 answers with choices


def prompt_of_body(body: Any) -> str:
    """The prompt of a completions body, or the last message's content of a chat body."""
    if not isinstance(body, dict):
        return ""
    if "messages" in body:
        msgs = body.get("messages") or []
        return str(msgs[-1].get("content", "")) if msgs else ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def default_text(body: Any) -> str:
    """Deterministic answer text: a hash of (model, prompt) plus the prompt's first words."""
    prompt = prompt_of_body(body)
    model = body.get("model", "") if isinstance(body, dict) else ""
    digest = hashlib.sha256(f"{model}\x00{prompt}".encode()).hexdigest()[:8]
    words = " ".join(prompt.split()[:12])
    return f"Echo {digest}: {words}"


class FakeOpenAI:
    """See the module docstring. `start()`/`stop()` or use as a context manager."""

    def __init__(
        self,
        faults: list[str | None] | None = None,
        *,
        fault_fn: Callable[[int, Any], str | None] | None = None,
        responder: Callable[[Any], str] | None = None,
        retry_after: float | str = 0.05,
        hang_seconds: float = 30.0,
        latency: float = 0.0,
        api_key: str | None = None,
        gate_after: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        echo_auth: bool = False,
    ):
        self._faults = list(faults or [])
        self.fault_fn = fault_fn
        self.responder = responder or default_text
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.latency = latency
        self.api_key = api_key
        self.gate_after = gate_after
        self.host = host
        self.port = port
        self.record = record
        self.echo_auth = echo_auth
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.n_requests = 0
        self.n_ok = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._gate: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None

    # ---------------------------------------------------------------- control
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set_faults(self, faults: list[str | None]) -> None:
        with self._lock:
            self._faults = list(faults)

    def open_gate(self) -> None:
        if self._loop and self._gate:
            self._loop.call_soon_threadsafe(self._gate.set)

    def ok_requests(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200 and r.completion is not None]

    @staticmethod
    def prompt_of(req: Received) -> str:
        return prompt_of_body(req.body)

    def start(self) -> "FakeOpenAI":
        self._thread = threading.Thread(target=self._run_thread, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving
    def _run_thread(self) -> None:
        asyncio.run(self.serve_forever())

    async def serve_forever(self, announce: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._gate = asyncio.Event()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        if announce:
            print(f"READY {self.url}", flush=True)
        self._ready.set()
        async with self._server:
            await self._stopping.wait()
            self._gate.set()
            self._server.close()
            # Cancel the handlers still running (hung requests) so the loop can close.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _choose_fault(self, index: int, body: Any) -> str | None:
        if self.fault_fn is not None:
            fault = self.fault_fn(index, body)
        else:
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
        return None if fault in (None, "ok") else str(fault)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(n) if n else b""
                keep_open = await self._respond(method, path, headers, raw, writer)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        except asyncio.CancelledError:
            # Only happens at shutdown; swallowing it keeps asyncio from logging every hung handler.
            return
        finally:
            try:
                writer.close()
            except Exception:  # pragma: no cover - socket already gone
                pass

    async def _respond(self, method: str, path: str, headers: dict, raw: bytes, writer) -> bool:
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        with self._lock:
            index = self.n_requests
            self.n_requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        rec = Received(index, method, path, headers, body, None, t_start=time.monotonic())
        if self.record:
            with self._lock:
                self.requests.append(rec)
        try:
            return await self._answer(rec, writer)
        finally:
            rec.t_end = time.monotonic()
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, rec: Received, writer) -> bool:
        if rec.method == "GET" and rec.path.rstrip("/").endswith("/models"):
            return await self._send(rec, writer, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        if rec.method != "POST" or not rec.path.rstrip("/").endswith(("/chat/completions", "/completions")):
            return await self._send(rec, writer, 404, {"error": {"message": f"no route {rec.method} {rec.path}"}})
        if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
            return await self._send(rec, writer, 401, {"error": {"message": "invalid api key"}})
        if not isinstance(rec.body, dict):
            return await self._send(rec, writer, 400, {"error": {"message": "body is not a JSON object"}})
        fault = rec.fault = self._choose_fault(rec.index, rec.body)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
            return False
        if fault == "drop":
            return False
        if fault == "429":
            return await self._send(rec, writer, 429, {"error": {"message": "rate limited"}},
                                    extra={"Retry-After": str(self.retry_after)})
        if fault is not None and fault.isdigit():
            return await self._send(rec, writer, int(fault), {"error": {"message": f"injected {fault}"}})
        if fault == "malformed":
            return await self._send(rec, writer, 200, b'{"id": "x", "choices": [ {"text": "trunc')
        chat = rec.path.rstrip("/").endswith("/chat/completions")
        if fault == "empty":
            return await self._send(rec, writer, 200, {"id": "x", "object": "chat.completion" if chat else "text_completion", "choices": []})
        if fault is not None:
            raise ValueError(f"unknown fault {fault!r}")
        if self.gate_after is not None:
            with self._lock:
                over = self.n_ok >= self.gate_after
                if not over:
                    self.n_ok += 1
            if over:
                await self._gate.wait()
        text = self.responder(rec.body)
        prompt = prompt_of_body(rec.body)
        max_tokens = rec.body.get("max_tokens")
        words = text.split()
        finish = "stop"
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            text, finish = " ".join(words[:max_tokens]), "length"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        payload = {
            "id": f"fake-{rec.index}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": rec.body.get("model", ""),
            "choices": [choice],
            "usage": usage,
        }
        rec.completion = text
        return await self._send(rec, writer, 200, payload)

    async def _send(self, rec: Received, writer, status: int, payload, extra: dict | None = None) -> bool:
        if self.echo_auth and status != 200 and isinstance(payload, dict):
            payload = {**payload, "received_authorization": rec.headers.get("authorization")}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()
        rec.status = status
        if status != 200:
            rec.completion = None
        return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible server for tests and benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    ap.add_argument("--no-record", action="store_true", help="do not keep every request in memory")
    args = ap.parse_args(argv)
    srv = FakeOpenAI(host=args.host, port=args.port, latency=args.latency, record=not args.no_record)
    try:
        asyncio.run(srv.serve_forever(announce=True))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
