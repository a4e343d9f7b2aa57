"""An async client for OpenAI-compatible completion servers (vLLM, TGI, llama.cpp, Ollama, OpenAI).

One `LLMClient` spreads requests over one or several endpoints, keeps at most
`concurrency` requests in flight, retries what is worth retrying (429 honouring
Retry-After, 5xx, timeouts, dropped connections, malformed or empty answers) with
exponential backoff and jitter, and gives up after `max_attempts`, returning a
result with `ok=False` and the last error: a request is never silently emptied.

The API key is read from the environment variable named by `api_key_env`; it
lives only in the request headers and is scrubbed from every error message.

`ClientSettings` holds the client's knobs for the configs that build one
(`phi1.synth.job.JobConfig`, `phi1.synth.topics.TopicsConfig`), so their fields
and defaults are written once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Sequence
from urllib.parse import urlparse

import httpx

from phi1.errors import ConfigError

log = logging.getLogger(__name__)

ROUTINGS = ("least-busy", "round-robin")
# Statuses worth another try: rate limits, timeouts, conflicts, and every 5xx.
RETRY_STATUSES = frozenset({408, 409, 425, 429})


@dataclass
class LLMResult:
    """The outcome of one logical request (after all its attempts)."""

    ok: bool
    text: str
    usage: dict
    error: str | None
    attempts: int
    finish_reason: str | None = None
    endpoint: str | None = None
    latency_s: float = 0.0


@dataclass
class ClientStats:
    """Running totals; `estimated_cost` uses the client's per-1k-token prices."""

    requests: int = 0  # logical requests finished
    failures: int = 0  # logical requests that gave up
    retries: int = 0  # extra attempts beyond the first
    attempts: int = 0  # HTTP attempts made
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost: float = 0.0
    errors: dict = field(default_factory=dict)  # error kind -> count, over all attempts

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tokens"] = self.tokens
        return d


class _RetryableError(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class _FatalError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """Normalise endpoint URLs: comma-separated or a list; a bare host gets `/v1` appended."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    for raw in items:
        url = str(raw).strip().rstrip("/")
        if not url:
            continue
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"endpoint: {raw!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
        if parsed.path in ("", "/"):
            url += "/v1"
        out.append(url)
    if not out:
        raise ConfigError("endpoint: no endpoint given; pass --endpoint http://HOST:PORT/v1 (comma-separated for several)")
    return out


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


ANY_MODEL = "default"  # the model name sent when none is given (a server that serves one model answers to it)


@dataclass(kw_only=True)
class ClientSettings:
    """The client fields a job config carries (keyword-only, so a config keeps its own positional fields).

    A subclass declares `endpoint` and `model` itself (they are positional there) and
    builds its client with `make_client()`.
    """

    concurrency: int = 8  # most requests in flight at once, over all endpoints
    api_key_env: str | None = None  # the environment variable holding the API key (the key is never written anywhere)
    timeout: float = 120.0  # seconds per HTTP attempt
    max_attempts: int = 6  # attempts per request before it is recorded as failed
    base_delay: float = 0.5  # first retry backoff in seconds (doubles each retry)
    routing: str = "least-busy"  # least-busy | round-robin: how requests are spread over the endpoints
    price_in_per_1m: float = 0.0  # USD per million prompt tokens, for the cost estimate
    price_out_per_1m: float = 0.0  # USD per million completion tokens

    def make_client(self) -> "LLMClient":
        return LLMClient(self.endpoint, self.model, api_key_env=self.api_key_env, concurrency=self.concurrency,
                         timeout=self.timeout, max_attempts=self.max_attempts, routing=self.routing,
                         base_delay=self.base_delay, price_in_per_1m=self.price_in_per_1m,
                         price_out_per_1m=self.price_out_per_1m)


class LLMClient:
    """Async OpenAI-compatible client with routing, bounded concurrency, retries and accounting.

    Use `await chat(messages, **sampling)` / `await complete(prompt, **sampling)` inside
    an event loop, or `run_chat_many(list_of_messages, **sampling)` from sync code.
    Sampling keywords (temperature, top_p, max_tokens, stop, seed, ...) go into the body.
    """

    def __init__(
        self,
        endpoints: str | list[str],
        model: str,
        api_key_env: str | None = None,
        concurrency: int = ClientSettings.concurrency,  # every default is ClientSettings'
        timeout: float = ClientSettings.timeout,
        max_attempts: int = ClientSettings.max_attempts,
        routing: str = ClientSettings.routing,
        price_in_per_1m: float = ClientSettings.price_in_per_1m,
        price_out_per_1m: float = ClientSettings.price_out_per_1m,
        base_delay: float = ClientSettings.base_delay,
        max_delay: float = 30.0,
        max_retry_after: float = 300.0,
        allow_empty: bool = False,
    ):
        if not model:
            raise ConfigError("model: empty; pass --model NAME (the name the server serves)")
        if concurrency < 1:
            raise ConfigError(f"concurrency: {concurrency} must be >= 1")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts: {max_attempts} must be >= 1")
        if timeout <= 0:
            raise ConfigError(f"timeout: {timeout} must be > 0 seconds")
        if routing not in ROUTINGS:
            raise ConfigError(f"routing: {routing!r} is not one of {', '.join(ROUTINGS)}")
        self.endpoints = parse_endpoints(endpoints)
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.routing = routing
        self.price_in_per_1m = price_in_per_1m
        self.price_out_per_1m = price_out_per_1m
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self.allow_empty = allow_empty
        self.api_key_env = api_key_env
        self._secret: str | None = None
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"api_key_env: environment variable {api_key_env} is not set or empty; export it or drop --api-key-env")
            self._secret = key
            self._headers["Authorization"] = f"Bearer {key}"
        self.stats = ClientStats()
        self._busy = [0] * len(self.endpoints)
        self._rr = 0
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: asyncio.Queue | None = None
        self._pools: dict[tuple[int, int], httpx.AsyncHTTPTransport] = {}
        self._timeout_ext = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._ssl = None

    def __repr__(self) -> str:  # never shows the key
        return f"LLMClient(endpoints={self.endpoints}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------ session
    def _session(self) -> asyncio.Queue:
        """The lanes for the running loop (httpx pools and asyncio queues are bound to one loop).

        A lane is one concurrency slot owning one single-connection httpx pool per
        endpoint. httpcore scans every connection of a pool on each request, so one
        big pool costs O(concurrency) CPU per request; single-connection pools keep
        the client's overhead flat as concurrency grows.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lanes is None:
            self._lanes = asyncio.Queue()
            for i in range(self.concurrency):
                self._lanes.put_nowait(i)
            self._pools = {}
            self._loop = loop
        return self._lanes

    def _pool(self, lane: int, ep: int) -> httpx.AsyncHTTPTransport:
        # The transport, not AsyncClient: the client's cookie, auth and redirect layers
        # cost ~0.3 ms of CPU per request and an API call needs none of them.
        pool = self._pools.get((lane, ep))
        if pool is None:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # built once: it costs ~10 ms
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            pool = httpx.AsyncHTTPTransport(limits=limits, verify=self._ssl)
            self._pools[(lane, ep)] = pool
        return pool

    async def aclose(self) -> None:
        """Close the HTTP connections of the current loop."""
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(p.aclose() for p in pools.values()), return_exceptions=True)
        self._lanes, self._loop = None, None

    # ------------------------------------------------------------ public API
    async def chat(self, messages: list[dict], **sampling) -> LLMResult:
        """One chat completion (`/chat/completions`); never raises for server faults."""
        return await self._request("chat/completions", {"messages": messages}, sampling)

    async def complete(self, prompt: str, **sampling) -> LLMResult:
        """One text completion (`/completions`); never raises for server faults."""
        return await self._request("completions", {"prompt": prompt}, sampling)

    def run_chat_many(self, list_of_messages: list[list[dict]], **sampling) -> list[LLMResult]:
        """Sync convenience: run all chats concurrently (bounded) and return results in order."""
        return self._run_many(lambda: [self.chat(m, **sampling) for m in list_of_messages])

    def run_complete_many(self, prompts: list[str], **sampling) -> list[LLMResult]:
        """Sync convenience for text completions, results in order."""
        return self._run_many(lambda: [self.complete(p, **sampling) for p in prompts])

    def _run_many(self, make_calls) -> list[LLMResult]:
        async def _all():
            try:
                return await asyncio.gather(*make_calls())
            finally:
                await self.aclose()

        return asyncio.run(_all())

    # ------------------------------------------------------------ internals
    def _pick(self, avoid: int | None) -> int:
        n = len(self.endpoints)
        if n == 1:
            return 0
        start = self._rr
        self._rr = (self._rr + 1) % n
        order = [(start + k) % n for k in range(n)]
        if avoid is not None:
            order = [i for i in order if i != avoid] + [avoid]
        if self.routing == "round-robin":
            return order[0]
        return min(order, key=lambda i: self._busy[i])  # min keeps the first of equals: rotation breaks ties

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def scrub(self, text: str) -> str:
        """`text` with the API key replaced by *** (for errors from other calls made with this key)."""
        return self._scrub(text)

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header (empty without a key), for other API calls (the Batch API)."""
        return {"Authorization": self._headers["Authorization"]} if "Authorization" in self._headers else {}

    def tally(self, res: LLMResult) -> LLMResult:
        """Count a result obtained outside `chat`/`complete` (a Batch API line) in `stats`."""
        return self._finish(res)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # "Equal jitter": half fixed, half random, so concurrent retries spread out but never go to zero.
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    async def _request(self, route: str, payload: dict, sampling: dict) -> LLMResult:
        lanes = self._session()
        body = {"model": self.model, **payload, **{k: v for k, v in sampling.items() if v is not None}}
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        chat = route.startswith("chat")
        t0 = time.monotonic()
        last_error, last_kind, ep, attempt = "", "", None, 0
        lane = await lanes.get()
        try:
            while True:
                attempt += 1
                ep = self._pick(ep)
                self._busy[ep] += 1
                self.stats.attempts += 1
                if attempt > 1:
                    self.stats.retries += 1
                err: _RetryableError | _FatalError | None = None
                try:
                    text, usage, finish = await self._attempt(self._pool(lane, ep), f"{self.endpoints[ep]}/{route}", data, chat)
                except (_RetryableError, _FatalError) as exc:
                    err = exc
                finally:
                    self._busy[ep] -= 1
                if err is None:
                    return self._finish(LLMResult(True, text, usage, None, attempt, finish, self.endpoints[ep],
                                                  time.monotonic() - t0))
                last_kind, last_error = err.kind, self._scrub(str(err))
                self.stats.errors[err.kind] = self.stats.errors.get(err.kind, 0) + 1
                if isinstance(err, _FatalError) or attempt >= self.max_attempts:
                    break
                delay = self._backoff(attempt, err.retry_after)
                log.debug("attempt %d failed (%s); retrying in %.2fs", attempt, last_error, delay)
                await asyncio.sleep(delay)
        finally:
            lanes.put_nowait(lane)
        return self._finish(LLMResult(False, "", {}, f"{last_kind}: {last_error}", attempt, None,
                                      self.endpoints[ep], time.monotonic() - t0))

    def _finish(self, res: LLMResult) -> LLMResult:
        st = self.stats
        st.requests += 1
        if not res.ok:
            st.failures += 1
            return res
        pt = int(res.usage.get("prompt_tokens") or 0)
        ct = int(res.usage.get("completion_tokens") or 0)
        st.prompt_tokens += pt
        st.completion_tokens += ct
        st.estimated_cost += pt / 1e6 * self.price_in_per_1m + ct / 1e6 * self.price_out_per_1m
        return res

    async def _attempt(self, pool: httpx.AsyncHTTPTransport, url: str, data: bytes, chat: bool):
        request = httpx.Request("POST", url, headers=self._headers, content=data, extensions=self._timeout_ext)
        try:
            resp = await pool.handle_async_request(request)
            try:
                await resp.aread()
            finally:
                await resp.aclose()
        except httpx.TimeoutException as exc:
            raise _RetryableError("timeout", f"no answer from {url} within {self.timeout}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _RetryableError("connection", f"{type(exc).__name__} talking to {url}: {exc}") from None
        status = resp.status_code
        if status != 200:
            snippet = resp.text[:300].replace("\n", " ")
            msg = f"HTTP {status} from {url}: {snippet}"
            if status in RETRY_STATUSES or status >= 500:
                ra = parse_retry_after(resp.headers.get("retry-after")) if status in (429, 503) else None
                raise _RetryableError(f"http_{status}", msg, ra)
            raise _FatalError(f"http_{status}", msg)
        try:
            obj = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _RetryableError("malformed", f"malformed JSON from {url}: {resp.text[:120]!r}") from None
        return read_completion(obj, chat, url, self.allow_empty)


def read_completion(obj, chat: bool, where: str, allow_empty: bool = False) -> tuple[str, dict, str | None]:
    """(text, usage, finish_reason) of a parsed completion answer (also a Batch API output line's body).

    Raises `_RetryableError` ("empty_choices", "empty_text") for an answer with nothing usable in it.
    """
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise _RetryableError("empty_choices", f"no choices in the answer from {where}")
    choice = choices[0]
    if chat:
        msg = choice.get("message") or {}
        text = msg.get("content") if isinstance(msg, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str) or (not text and not allow_empty):
        raise _RetryableError("empty_text", f"empty completion text from {where}")
    usage = obj.get("usage") or {}
    usage = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if isinstance(usage.get(k), int)}
    return text, usage, choice.get("finish_reason")

