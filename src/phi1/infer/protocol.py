"""The OpenAI wire format: request schemas (strict), error bodies, the chat template, response shapes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# A base model has no chat format of its own; this plain one is what /v1/chat/completions renders.
# Each message becomes "### Role:\n<content>\n\n" and the prompt ends with "### Assistant:\n";
# generation stops at the next "\n### " so the model does not write the user's next turn.
CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\n### "


class APIError(Exception):
    """An error answered to the client as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # Unknown fields and wrong JSON types are errors, not silently ignored or coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # 0 or -1: off
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 16:
            raise APIError(400, f"stop: {len(stops)} stop strings; at most 16 are allowed", "stop")
        return [s for s in stops if s]


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


def parse_request(raw: bytes, schema: type[_Strict]) -> _Strict:
    """Decode and validate a JSON body, raising APIError(400) that names the offending field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", None, "invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "json-or-python")))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"{loc}: unknown field; this server accepts {sorted(schema.model_fields)}"
        elif kind == "missing":
            msg = f"{loc}: required field is missing"
        else:
            msg = f"{loc}: {err['msg']} (got {json.dumps(err.get('input'))[:80]})"
        return_param = str(err["loc"][0]) if err["loc"] else None
        raise APIError(400, msg, return_param, kind) from None


def render_chat(messages: list[ChatMessage]) -> str:
    """The documented plain chat template for a base model (see CHAT_ROLES)."""
    parts = [f"### {CHAT_ROLES[m.role]}:\n{m.content}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


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
