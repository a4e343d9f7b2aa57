"""Chat templates: Hugging Face's Jinja chat templates, rendered as `apply_chat_template` renders them.

A model directory's template lives in tokenizer_config.json (`chat_template`: a string, or a list
of `{name, template}` where "default" is used) or in `chat_template.jinja` (transformers 5). The
Jinja environment is transformers': sandboxed, `trim_blocks` + `lstrip_blocks`, the loop-controls
extension, `raise_exception`, `strftime_now` and a `tojson` that keeps non-ASCII text.

`end_marker` finds the string a template closes an assistant turn with (phi-3: `<|end|>`), which
generation stops at.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from phi1.errors import Phi1Error

# phi-3's format (Phi-3-mini-4k-instruct): `<|role|>\n` + content + `<|end|>\n` per message; the
# prompt for a reply ends with `<|assistant|>\n`; a full conversation ends with the EOS token.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% else %}{{ raise_exception('phi-3 chat roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Named templates a user can give instead of a file (`--chat-template NAME`).
NAMED_TEMPLATES = {"phi-3": PHI3_TEMPLATE}

_SENTINEL = "\x00phi1-reply\x00"


class TemplateError(Phi1Error):
    """A template failed to compile or raised while rendering (its `raise_exception` message)."""


def _raise_exception(message):
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    raise JinjaTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A compiled chat template with the tokenizer's special tokens bound."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", where: str = "chat template"):
        from jinja2.exceptions import TemplateSyntaxError

        self.source = source
        self.bos_token, self.eos_token, self.where = bos_token, eos_token, where
        try:
            self._template = _compile(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{where}: not a valid Jinja template ({exc.message}, line {exc.lineno})") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        """The conversation as text, exactly as `tokenizer.apply_chat_template(..., tokenize=False)`."""
        from jinja2.exceptions import TemplateError as JinjaTemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        except JinjaTemplateError as exc:
            raise TemplateError(f"{self.where}: {exc}") from None

    def end_marker(self) -> str | None:
        """The text right after an assistant message's content (e.g. `<|end|>`), up to whitespace.

        None when the template puts nothing there (then generation stops at EOS only)."""
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
                               add_generation_prompt=False)
        except TemplateError:
            return None
        if _SENTINEL not in text:
            return None
        tail = text.split(_SENTINEL, 1)[1].strip()
        marker = tail.split()[0] if tail else ""
        if not marker or marker == self.eos_token:
            return None
        return marker

    def assistant_spans(self, messages: list[dict]) -> list[tuple[int, int]]:
        """Character spans of each assistant message's content plus its end marker in `render(messages)`.

        Found by rendering growing prefixes of the conversation: the text a prefix ending before an
        assistant turn (with the generation prompt) renders is where that turn's reply starts."""
        full = self.render(messages, add_generation_prompt=False)
        marker = self.end_marker() or ""
        spans, start = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self.render(messages[:i], add_generation_prompt=True)
            if not full.startswith(prefix):
                raise TemplateError(f"{self.where}: renders a conversation's beginning differently from the whole "
                                    "conversation, so assistant tokens cannot be located for the loss mask")
            content = m["content"] if m["content"] in full[max(len(prefix), start):] else m["content"].strip()
            begin = full.find(content, max(len(prefix), start)) if content else len(prefix)
            if begin < 0:
                raise TemplateError(f"{self.where}: does not render assistant message {i} verbatim, so its tokens "
                                    "cannot be located for the loss mask")
            end = begin + len(content)
            if marker and full.startswith(marker, end):
                end += len(marker)
            spans.append((begin, end))
            start = end
        return spans


def template_source(name_or_path: str) -> str:
    """A template's text from a name in NAMED_TEMPLATES or a .jinja file."""
    if name_or_path in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise Phi1Error(f"--chat-template {name_or_path}: neither a template name ({', '.join(NAMED_TEMPLATES)}) "
                        "nor a template file")
    from phi1.utils.io import read_text_file

    return read_text_file(p, "--chat-template")


def read_chat_template(model_dir: str | os.PathLike) -> str | None:
    """The chat template a tokenizer/model directory carries, or None."""
    d = Path(model_dir)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        from phi1.utils.io import read_text_file

        return read_text_file(jinja, "chat template")
    cfg_file = d / "tokenizer_config.json"
    if not cfg_file.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # load_tokenizer reports a malformed file
    except UnicodeDecodeError as exc:
        raise Phi1Error(f"{cfg_file}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    t = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) else None
