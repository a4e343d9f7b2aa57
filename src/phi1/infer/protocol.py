"""The OpenAI wire format: request schemas (strict), error bodies, the chat template, response shapes."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Ranges checked at the HTTP edge, so nothing out of range reaches the engine (see docs/infer.md).
INT32_MAX = 2**31 - 1
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # int64, as OpenAI documents; choice j uses seed + j
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024


class APIError(Exception):
    """An error answered to the client as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # Unknown fields and wrong JSON types are errors, not silently ignored or coerced; NaN and
    # Infinity (which Python's json accepts) are not numbers here.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)  # and at most the server's limit
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1, le=INT32_MAX)  # 0 or -1: off
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=INT32_MAX)  # and prompts x n at most the server's --max-n
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: {len(stops)} stop strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
        for s in stops:
            if len(s) > MAX_STOP_CHARS:
                raise APIError(400, f"stop: a stop string of {len(s)} characters; at most {MAX_STOP_CHARS} are "
                                    "allowed", "stop")
        return [s for s in stops if s]


MAX_LOGPROBS = 5  # OpenAI's limit for the legacy completions API


class CompletionRequest(_Common):
    # A prompt is text, several texts, token ids, or several token-id lists (what lm-evaluation-harness
    # sends with tokenized_requests).
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False  # return the prompt before the completion (with its logprobs when logprobs is set)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # the top-N alternatives per token
    # OpenAI's default for completions; 0 (with echo) scores the prompt without generating
    max_tokens: int | None = Field(default=16, ge=0, le=INT32_MAX)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


# A \uD800-\uDFFF escape in the raw body: the only way a lone surrogate (not valid Unicode text, so
# nothing downstream can encode it) gets into a decoded string. Valid pairs match too; the walk decides.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_request(raw: bytes, schema: type[_Strict]) -> _Strict:
    """Decode and validate a JSON body (UTF-8, as RFC 8259 requires), raising APIError(400) that names
    the offending field."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except RecursionError:
        raise APIError(400, "request body is not valid JSON here: it is nested too deeply", None,
                       "invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise APIError(400, f"request body is not valid JSON: {_clip(str(exc), 200)}", None,
                       "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", None, "invalid_json")
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(data)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "json-or-python")))
        loc = _clip(loc, 80)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"{loc}: unknown field; this server accepts {sorted(schema.model_fields)}"
        elif kind == "missing":
            msg = f"{loc}: required field is missing"
        else:
            msg = f"{loc}: {err['msg']} (got {_show(err.get('input'))})"
        return_param = _clip(str(err["loc"][0]), 80) if err["loc"] else None
        raise APIError(400, msg, return_param, kind) from None


def _reject_lone_surrogates(data: dict) -> None:
    """APIError(400) naming the top-level field whose text (or key) holds an unpaired UTF-16 surrogate."""
    for field, value in data.items():
        stack = [field, value]
        while stack:  # iterative: the body may be deeply nested
            v = stack.pop()
            if isinstance(v, str):
                if _SURROGATE.search(v):
                    name = _clip(_SURROGATE.sub("?", field), 80)
                    raise APIError(400, f"{name}: contains an unpaired UTF-16 surrogate escape (like \\ud800), "
                                        "which is not valid Unicode text", name, "invalid_unicode")
            elif isinstance(v, dict):
                stack.extend(v.keys())
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _show(v) -> str:
    """A short, always-printable rendering of a bad input value for an error message."""
    if isinstance(v, str):
        return json.dumps(_clip(v, 60))
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, int):
        return str(v) if v.bit_length() <= 128 else f"an integer of {v.bit_length()} bits"
    if isinstance(v, float):
        return json.dumps(v)  # NaN, Infinity as JSON-ish words
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    if isinstance(v, dict):
        return f"an object with {len(v)} fields"
    return type(v).__name__


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """The request's messages as the dicts a chat template reads (`role`, `content`, and `name` if given)."""
    return [m.model_dump(exclude_none=True) for m in messages]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj) -> bytes:
    """One server-sent event carrying a JSON object (or the literal [DONE])."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
