"""A small OpenAI-compatible HTTP server for tests and benchmarks, with fault injection.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to serve
`POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` on
127.0.0.1 (and the Batch API's files and batches, see below), answers with
deterministic text, and can misbehave on a schedule.

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
A body with `response_format` (json_object, or json_schema with an object schema) gets, from
the default responder, a JSON object: every string property of the schema holds that
deterministic text ("text" for json_object), integers the prompt's word count, booleans true.
Optional `api_key`: requests whose `Authorization` is not `Bearer <api_key>` get 401 (the
files and batches routes too). `echo_auth=True` makes every error body repeat the request's
Authorization header, like a careless proxy would: a test of the client's key scrubbing.

Batch API (`POST /v1/files` multipart with purpose=batch, `GET /v1/files[?purpose=]`,
`GET /v1/files/{id}[/content]`, `POST /v1/batches`, `GET /v1/batches[?limit=&after=]`,
`GET /v1/batches/{id}`): a batch is created `validating`; each retrieve counts a poll, it
reports `in_progress` for the first `batch_polls` polls (forever while `batch_hold` is set,
until `release_batches()`), then runs every line of its input file through the responder and
the fault schedule above (each line is one more entry of `srv.requests`, with `batch_id`
set, and takes the next arrival number) and is `completed`, with an output file of the 200
answers and an error file of the rest (None when empty, as OpenAI does):

    digit faults      an error-file line with that response status_code
    "hang"/"drop"     an error-file line with error code timeout / connection
    "malformed"       an output line whose body is not a completion; "empty": `choices: []`
    "lost"            no line in either file

A request file with a bad line (not JSON, no or a repeated custom_id, method not POST, url not
the batch's endpoint, no body) makes the batch `failed` with errors, as OpenAI's validation does.
`batch_faults` (a list consumed one entry per created batch; `set_batch_faults`) makes a whole
batch end "failed" (errors, no files), "expired" (the first half of its lines answered, the
rest error lines with code batch_expired) or "cancelled" (no files). `create_faults` (one
entry per `POST /v1/batches`): "drop" creates the batch and closes the connection unanswered
(the answer lost on the wire), a digit answers that status without creating one.
`srv.files` (id -> file object with its `content`), `srv.batches` (the batch objects in
creation order) and `srv.batch_lines(batch_id)` (its parsed input lines) show what arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl

__all__ = ["FakeOpenAI", "Received", "default_answer", "default_text"]
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


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
    batch_id: str | None = None  # for a line of a batch: the batch it came in


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


def default_answer(body: Any) -> str:
    """`default_text`, or for a body asking for JSON (`response_format`) an object holding it."""
    rf = body.get("response_format") if isinstance(body, dict) else None
    if not isinstance(rf, dict) or rf.get("type") not in ("json_object", "json_schema"):
        return default_text(body)
    text = default_text(body)
    if rf["type"] == "json_object":
        return json.dumps({"text": text})
    schema = (rf.get("json_schema") or {}).get("schema") or {}
    fill = {"string": text, "integer": len(prompt_of_body(body).split()), "number": 0.5, "boolean": True,
            "array": [], "object": {}}
    return json.dumps({k: fill.get((v or {}).get("type", "string")) for k, v in (schema.get("properties") or {}).items()})


def parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """field name -> (file name or None, bytes) of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in raw.split(b"--" + m.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        disp = re.search(rb'name="([^"]*)"(?:; filename="([^"]*)")?', head)
        if disp:
            parts[disp.group(1).decode()] = (disp.group(2).decode() if disp.group(2) else None,
                                             data[:-2] if data.endswith(b"\r\n") else data)
    return parts


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
        batch_polls: int = 1,
        batch_hold: bool = False,
        batch_faults: list[str | None] | None = None,
        create_faults: list[str | None] | None = None,
    ):
        self._faults = list(faults or [])
        self.fault_fn = fault_fn
        self.responder = responder or default_answer
        self.batch_polls = batch_polls
        self.batch_hold = batch_hold
        self._batch_faults = list(batch_faults or [])
        self._create_faults = list(create_faults or [])
        self.files: dict[str, dict] = {}
        self.batches: list[dict] = []
        self._batch_state: dict[str, dict] = {}  # batch id -> {"polls": n, "fault": f}
        self._ids = itertools.count(1)
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

    def set_batch_faults(self, faults: list[str | None]) -> None:
        with self._lock:
            self._batch_faults = list(faults)

    def release_batches(self) -> None:
        """Let held batches finish at their next poll."""
        self.batch_hold = False

    def batch_lines(self, batch_id: str) -> list[dict]:
        """The parsed lines of a batch's input file."""
        batch = next(b for b in self.batches if b["id"] == batch_id)
        content = self.files[batch["input_file_id"]]["content"]
        return [json.loads(line) for line in content.splitlines() if line.strip()]

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
            return await self._answer(rec, writer, raw)
        finally:
            rec.t_end = time.monotonic()
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, rec: Received, writer, raw: bytes = b"") -> bool:
        if rec.method == "GET" and rec.path.rstrip("/").endswith("/models"):
            return await self._send(rec, writer, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        route = rec.path.split("?", 1)[0].rstrip("/")
        if re.search(r"/v1/(files|batches)(/|$)", route):
            if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
                return await self._send(rec, writer, 401, {"error": {"message": "invalid api key"}})
            return await self._batch_api(rec, writer, route, raw)
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
        payload, rec.completion = self._completion(rec.index, rec.body, chat)
        return await self._send(rec, writer, 200, payload)

    def _completion(self, index: int, body: dict, chat: bool) -> tuple[dict, str]:
        """(the 200 answer's JSON, its text) for one request body."""
        text = self.responder(body)
        prompt = prompt_of_body(body)
        max_tokens = body.get("max_tokens")
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
            "id": f"fake-{index}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": usage,
        }
        return payload, text

    # ---------------------------------------------------------------- Batch API
    def _add_file(self, content: bytes, filename: str, purpose: str) -> dict:
        f = {"id": f"file-{next(self._ids):04d}", "object": "file", "bytes": len(content), "created_at": int(time.time()),
             "filename": filename, "purpose": purpose, "status": "processed", "content": content}
        self.files[f["id"]] = f
        return f

    @staticmethod
    def _public(f: dict) -> dict:
        return {k: v for k, v in f.items() if k != "content"}

    async def _batch_api(self, rec: Received, writer, route: str, raw: bytes) -> bool:
        parts = route.split("/")
        what, rest = parts[parts.index("v1") + 1], parts[parts.index("v1") + 2:]
        query = dict(parse_qsl(rec.path.split("?", 1)[1])) if "?" in rec.path else {}
        get, post = rec.method == "GET", rec.method == "POST"
        if what == "files":
            if post and not rest:
                form = parse_multipart(raw, rec.headers.get("content-type", ""))
                if "file" not in form or form.get("purpose", (None, b""))[1] != b"batch":
                    return await self._send(rec, writer, 400, {"error": {"message": "need a file part and purpose=batch"}})
                f = self._add_file(form["file"][1], form["file"][0] or "upload.jsonl", "batch")
                return await self._send(rec, writer, 200, self._public(f))
            if get and not rest:
                data = [self._public(f) for f in reversed(list(self.files.values()))
                        if query.get("purpose") in (None, f["purpose"])]
                return await self._send(rec, writer, 200, {"object": "list", "data": data, "has_more": False})
            f = self.files.get(rest[0]) if rest else None
            if get and f is not None and rest[1:] in ([], ["content"]):
                return await self._send(rec, writer, 200, f["content"] if rest[1:] else self._public(f))
            return await self._send(rec, writer, 404, {"error": {"message": f"No such File object: {rec.path}"}})
        if post and not rest:
            return await self._create_batch(rec, writer)
        if get and not rest:
            newest = list(reversed(self.batches))
            if query.get("after"):
                at = [k for k, b in enumerate(newest) if b["id"] == query["after"]]
                newest = newest[at[0] + 1:] if at else []
            page = newest[:int(query.get("limit", 20))]
            return await self._send(rec, writer, 200, {"object": "list", "data": page, "has_more": len(newest) > len(page),
                                                       "last_id": page[-1]["id"] if page else None})
        batch = next((b for b in self.batches if b["id"] == rest[0]), None) if len(rest) == 1 else None
        if get and batch is not None:
            self._poll(batch)
            return await self._send(rec, writer, 200, batch)
        return await self._send(rec, writer, 404, {"error": {"message": f"no route {rec.method} {rec.path}"}})

    async def _create_batch(self, rec: Received, writer) -> bool:
        body = rec.body if isinstance(rec.body, dict) else {}
        with self._lock:
            cfault = self._create_faults.pop(0) if self._create_faults else None
        if cfault and cfault.isdigit():
            return await self._send(rec, writer, int(cfault), {"error": {"message": f"injected {cfault}"}})
        f = self.files.get(body.get("input_file_id"))
        bad = ("input_file_id: no such file" if f is None else
               f"endpoint must be one of {BATCH_ENDPOINTS}" if body.get("endpoint") not in BATCH_ENDPOINTS else
               "completion_window must be 24h" if body.get("completion_window") != "24h" else None)
        if bad:
            return await self._send(rec, writer, 400, {"error": {"message": bad}})
        batch = {"id": f"batch-{next(self._ids):04d}", "object": "batch", "endpoint": body["endpoint"], "errors": None,
                 "input_file_id": f["id"], "completion_window": "24h", "status": "validating", "output_file_id": None,
                 "error_file_id": None, "created_at": int(time.time()), "in_progress_at": None, "completed_at": None,
                 "failed_at": None, "expired_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        with self._lock:
            self._batch_state[batch["id"]] = {"polls": 0, "fault": self._batch_faults.pop(0) if self._batch_faults else None}
            self.batches.append(batch)
        if cfault == "drop":
            return False  # made, but the answer never reaches the client
        return await self._send(rec, writer, 200, batch)

    def _poll(self, batch: dict) -> None:
        """One retrieve: in_progress for `batch_polls` polls (or while held), then run it."""
        state = self._batch_state[batch["id"]]
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        state["polls"] += 1
        if self.batch_hold or state["polls"] <= self.batch_polls:
            total = sum(1 for line in self.files[batch["input_file_id"]]["content"].splitlines() if line.strip())
            done = min(total - 1, total * state["polls"] // (self.batch_polls + 1))
            batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or int(time.time()),
                         request_counts={"total": total, "completed": max(0, done), "failed": 0})
            return
        self._run_batch(batch, state["fault"])

    def _run_batch(self, batch: dict, fault: str | None) -> None:
        now = int(time.time())
        lines, problems, seen = [], [], set()
        for n, raw in enumerate(self.files[batch["input_file_id"]]["content"].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            cid = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(cid, str) or not cid or cid in seen:
                problems.append(f"line {n}: not JSON, or custom_id missing or repeated")
            elif line.get("method") != "POST" or line.get("url") != batch["endpoint"] or not isinstance(line.get("body"), dict):
                problems.append(f"line {n}: method must be POST, url {batch['endpoint']}, body an object")
            else:
                seen.add(cid)
                lines.append(line)
        if fault == "failed" or problems:
            errors = [{"code": "invalid_request", "message": m, "line": None} for m in (problems[:5] or ["injected failure"])]
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors},
                         request_counts={"total": 0, "completed": 0, "failed": 0})
            return
        if fault == "cancelled":
            batch.update(status="cancelled", cancelled_at=now)
            return
        keep = len(lines) // 2 if fault == "expired" else len(lines)
        out, err = [], []
        for k, line in enumerate(lines):
            if k >= keep:
                err.append({"id": f"batch_req_x{k}", "custom_id": line["custom_id"], "response": None, "error": {
                    "code": "batch_expired", "message": "This request could not be executed before the window expired."}})
                continue
            where, row = self._batch_line(batch, line)
            if where is not None:
                (out if where == "out" else err).append(row)

        def jsonl(rows: list[dict]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        batch.update(
            status="expired" if fault == "expired" else "completed", **{"expired_at" if fault == "expired" else "completed_at": now},
            output_file_id=self._add_file(jsonl(out), f"{batch['id']}_output.jsonl", "batch_output")["id"] if out else None,
            error_file_id=self._add_file(jsonl(err), f"{batch['id']}_error.jsonl", "batch_output")["id"] if err else None,
            request_counts={"total": len(lines), "completed": len(out), "failed": len(err)})

    def _batch_line(self, batch: dict, line: dict) -> tuple[str | None, dict]:
        """("out" | "err" | None, the result line) for one request of a batch, through the fault schedule."""
        body, cid = line["body"], line["custom_id"]
        with self._lock:
            index = self.n_requests
            self.n_requests += 1
        rec = Received(index, "POST", batch["endpoint"], {}, body, None, t_start=time.monotonic(), batch_id=batch["id"])
        if self.record:
            with self._lock:
                self.requests.append(rec)
        fault = rec.fault = self._choose_fault(index, body)
        rec.t_end = time.monotonic()

        def answer(status: int, payload) -> dict:
            rec.status = status
            return {"id": f"batch_req_{index}", "custom_id": cid, "error": None,
                    "response": {"status_code": status, "request_id": f"req-{index}", "body": payload}}

        if fault == "lost":
            return None, {}
        if fault is not None and fault.isdigit():
            return "err", answer(int(fault), {"error": {"message": f"injected {fault}"}})
        if fault in ("hang", "drop"):
            return "err", {"id": f"batch_req_{index}", "custom_id": cid, "response": None,
                           "error": {"code": "timeout" if fault == "hang" else "connection", "message": f"injected {fault}"}}
        if fault == "malformed":
            return "out", answer(200, '{"id": "x", "choices": [ {"text": "trunc')
        if fault == "empty":
            return "out", answer(200, {"id": "x", "choices": []})
        if fault is not None:
            raise ValueError(f"unknown fault {fault!r}")
        payload, rec.completion = self._completion(index, body, batch["endpoint"].endswith("/chat/completions"))
        return "out", answer(200, payload)

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
