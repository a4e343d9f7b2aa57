"""Generation specs: the YAML files that say what a synthetic-data job asks for.

A spec names its `kind` (textbooks, exercises, stories), the prompt `template`
with `{placeholders}`, the pools the prompt builder samples from, and default
sampling parameters. The shipped defaults live in `phi1/recipes/synth/`.
Pools are either lists (uniform choice) or mappings `item: weight`.
Optional `response_format` (an OpenAI json_schema or json_object format) and `text_field`
ask for structured answers: see `read_structured`.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi1.errors import ConfigError, Phi1Error
from phi1.utils.config import read_yaml_mapping

KINDS = ("textbooks", "exercises", "stories")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "recipes" / "synth"
SAMPLING_KEYS = {"temperature", "top_p", "max_tokens", "stop", "presence_penalty", "frequency_penalty", "seed"}

# The placeholders each kind's prompt builder fills in.
PLACEHOLDERS = {
    # leaf and path: topics_file specs; document: seed_documents specs (see `sources.py`)
    "textbooks": {"topic", "subtopic", "concepts", "audience", "style", "seed_words", "leaf", "path", "document"},
    "exercises": {"function_name", "difficulty", "concepts", "topic", "n_asserts"},
    "stories": {"noun", "verb", "adjective", "features"},
}
# Pools each kind requires (beyond the common keys).
REQUIRED = {
    "textbooks": ("audiences", "styles", "seed_words"),  # + exactly one of sources.SOURCES
    "exercises": ("name_parts", "difficulties", "concepts", "topics"),
    "stories": ("vocabulary", "features"),
}
COMMON = {"kind", "api", "system", "template", "sampling", "description", "response_format", "text_field"}
OPTIONAL = {
    "textbooks": {"concepts_per_prompt", "seed_words_per_prompt", "topics", "topics_file", "seed_documents",
                  "document_chars"},
    "exercises": {"concepts_per_prompt", "asserts"},
    "stories": {"features_per_prompt"},
}


@dataclass
class Spec:
    kind: str
    template: str
    pools: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    api: str = "chat"
    source: str = "<dict>"
    sha256: str = ""
    # Structured output: the OpenAI `response_format` sent with every request, and the key of the
    # JSON answer that becomes the record's `text` (see `read_structured`).
    response_format: dict | None = None
    text_field: str | None = None
    # textbooks: the subject source the spec chose (inline topics, a topic tree, seed documents)
    textbook_source: Any = field(default=None, repr=False, compare=False)

    def get(self, key: str, default=None):
        return self.pools.get(key, default)

    def request_extra(self) -> dict:
        """Body fields every request of this spec carries beyond prompt and sampling."""
        return {"response_format": self.response_format} if self.response_format else {}


def load_spec(path: str | Path | None, kind: str) -> Spec:
    """Load and validate a spec; `path=None` loads the shipped default for `kind`."""
    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    p = Path(path) if path else DEFAULT_DIR / f"{kind}.yaml"
    if not p.exists():
        raise Phi1Error(f"{p}: spec file not found; pass --spec PATH or omit it for the default")
    raw = read_yaml_mapping(p, "synth spec")
    return spec_from_dict(raw, kind, source=str(p))


def spec_from_dict(raw: Any, kind: str, source: str = "<dict>") -> Spec:
    """Validate a parsed spec, naming the field, the bad value and what is allowed."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    got_kind = raw.get("kind", kind)
    if got_kind != kind:
        raise ConfigError(f"{source}: kind is {got_kind!r} but the command is `synth {kind}`; use a {kind} spec")
    allowed = COMMON | set(REQUIRED[kind]) | OPTIONAL[kind]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in ("template", *REQUIRED[kind]) if k not in raw]
    if missing:
        raise ConfigError(f"{source}: missing field(s) {missing} for a {kind} spec")
    template = raw["template"]
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{source}: template must be a non-empty string")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    except ValueError as exc:
        raise ConfigError(f"{source}: template: {exc}; write literal braces as {{{{ and }}}}") from None
    bad = sorted(names - PLACEHOLDERS[kind])
    if bad:
        raise ConfigError(f"{source}: template uses unknown placeholder(s) {bad}; allowed: {sorted(PLACEHOLDERS[kind])}")
    sampling = raw.get("sampling") or {}
    if not isinstance(sampling, dict) or set(sampling) - SAMPLING_KEYS:
        raise ConfigError(f"{source}: sampling: unknown key(s) {sorted(set(sampling) - SAMPLING_KEYS) if isinstance(sampling, dict) else sampling}; allowed: {sorted(SAMPLING_KEYS)}")
    api = raw.get("api", "chat")
    if api not in ("chat", "completions"):
        raise ConfigError(f"{source}: api: {api!r} is not one of chat, completions")
    pools = {k: v for k, v in raw.items() if k not in COMMON}
    for key in REQUIRED[kind]:
        _check_pool(source, key, pools[key])
    textbook_source = _textbook_source(source, raw, names) if kind == "textbooks" else None
    response_format, text_field = _check_structured(source, raw)
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False)
    if textbook_source is not None and textbook_source.sha256:  # a changed tree or document set is another spec
        canonical += "\n" + textbook_source.sha256
    spec = Spec(kind, template, pools, dict(sampling), raw.get("system"), api, source,
                hashlib.sha256(canonical.encode()).hexdigest(), response_format=response_format, text_field=text_field)
    spec.textbook_source = textbook_source
    return spec


def _textbook_source(source: str, raw: dict, names: set[str]):
    """Exactly one of inline topics, topics_file, seed_documents; loaded, with the template checked against it."""
    from phi1.synth.sources import check_template, load_source

    src = load_source(raw, source)
    if src.name == "topics":
        _check_pool(source, "topics", raw["topics"])
    check_template(source, src.name, names)
    return src


def _check_pool(source: str, key: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"{source}: {key} is empty; give at least one entry")
        for k, v in value.items():
            if isinstance(v, (list, dict)):
                _check_pool(source, f"{key}.{k}", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ConfigError(f"{source}: {key}.{k}: weight {v} must be >= 0")
    elif isinstance(value, list):
        if not value:
            raise ConfigError(f"{source}: {key} is an empty list; give at least one entry")
    else:
        raise ConfigError(f"{source}: {key} must be a list or a mapping, got {type(value).__name__}")


def range_of(spec: Spec, key: str, default: tuple[int, int]) -> tuple[int, int]:
    """A `{min, max}` field as a validated (lo, hi) pair."""
    v = spec.pools.get(key)
    if v is None:
        return default
    if not isinstance(v, dict) or not {"min", "max"} <= set(v):
        raise ConfigError(f"{spec.source}: {key} must be a mapping with min and max, got {v!r}")
    lo, hi = v["min"], v["max"]
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        raise ConfigError(f"{spec.source}: {key}: need integers 0 <= min <= max, got min={lo!r} max={hi!r}")
    return lo, hi


# ------------------------------------------------------------------ structured output
_FORMAT_FIX = "write it as {type: json_schema, json_schema: {name: NAME, schema: {type: object, ...}}} or {type: json_object}"
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCED = re.compile(r"^```(?:json)?\s*\n(.*)\n\s*```$", re.DOTALL | re.IGNORECASE)


def _check_structured(source: str, raw: dict) -> tuple[dict | None, str | None]:
    """The spec's (response_format, text_field), validated; text_field defaults to "text"."""
    rf, name = raw.get("response_format"), raw.get("text_field")
    if rf is None:
        if name is not None:
            raise ConfigError(f"{source}: text_field needs response_format; add response_format ({_FORMAT_FIX}) "
                              "or drop text_field")
        return None, None
    if not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object"):
        raise ConfigError(f"{source}: response_format: {rf!r} asks for no JSON answer; {_FORMAT_FIX}")
    allowed = {"type", "json_schema"} if rf["type"] == "json_schema" else {"type"}
    if set(rf) - allowed:
        raise ConfigError(f"{source}: response_format: unknown key(s) {sorted(set(rf) - allowed)} for type "
                          f"{rf['type']}; {_FORMAT_FIX}")
    name = "text" if name is None else name
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: text_field: {name!r} must be the name of a key of the JSON answer")
    if rf["type"] == "json_object":
        if "json" not in f"{raw.get('system') or ''} {raw.get('template')}".lower():
            raise ConfigError(f"{source}: response_format json_object: OpenAI refuses it unless the prompt mentions "
                              f"JSON; say in template or system which JSON object to answer with (with a {name!r} key)")
        return rf, name
    js = rf.get("json_schema")
    if not isinstance(js, dict) or set(js) - {"name", "schema", "strict", "description"}:
        raise ConfigError(f"{source}: response_format.json_schema: must map name, schema and optionally strict, "
                          f"description; got {js!r}")
    if not isinstance(js.get("name"), str) or not _SCHEMA_NAME.match(js["name"]):
        raise ConfigError(f"{source}: response_format.json_schema.name: {js.get('name')!r} must be 1-64 letters, "
                          "digits, _ or -")
    if not isinstance(js.get("strict", False), bool):
        raise ConfigError(f"{source}: response_format.json_schema.strict: {js['strict']!r} must be true or false")
    schema = js.get("schema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(props, dict):
        raise ConfigError(f"{source}: response_format.json_schema.schema must be an object schema "
                          f"({{type: object, properties: {{{name}: {{type: string}}, ...}}}}), got {schema!r}")
    if name not in props:
        raise ConfigError(f"{source}: text_field {name!r} is not among the schema's properties {sorted(props)}; "
                          "add it or set text_field to one of them")
    if name not in (schema.get("required") or []):
        raise ConfigError(f"{source}: text_field {name!r} is not in the schema's required list; add it there, "
                          "else an answer may leave the text out")
    if isinstance(props[name], dict) and props[name].get("type", "string") != "string":
        raise ConfigError(f"{source}: text_field {name!r} has type {props[name]['type']!r} in the schema; the "
                          "record's text must be a string")
    return rf, name


def read_structured(answer: str, text_field: str) -> tuple[str, dict]:
    """(text, the parsed object) of a structured answer; a ValueError says why it is unusable.

    The answer must be one JSON object (a ```json fence around all of it, from a server that
    ignores response_format, is accepted) whose `text_field` is a non-empty string.
    """
    body = answer.strip()
    fenced = _FENCED.match(body)
    try:
        obj = json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc.msg} at char {exc.pos}): {answer[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the answer is a JSON {type(obj).__name__}, not an object with {text_field!r}")
    text = obj.get(text_field)
    if not isinstance(text, str) or not text.strip():
        got = "missing" if text_field not in obj else f"{type(text).__name__} {text!r:.40}"
        raise ValueError(f"the JSON answer has no non-empty string {text_field!r} ({got}; keys {sorted(obj)[:8]})")
    return text, obj


def tree_of_records(metas: list[dict]):
    """The topic tree of the spec the records were made from (`meta.spec`), when that spec has a
    topics_file and neither it nor the tree changed since (its hash is still `meta.spec_sha256`);
    a `phi1.synth.sources.TopicTree`, or None."""
    pairs = dict.fromkeys((str(m["spec"]), m.get("spec_sha256")) for m in metas if m.get("spec"))
    for spec_path, sha in pairs:
        try:
            if "topics_file" not in read_yaml_mapping(spec_path, "synth spec"):
                continue  # (a seed_documents spec would read every document again)
            spec = load_spec(spec_path, "textbooks")
        except Phi1Error:
            continue
        src = spec.textbook_source
        if src is not None and src.tree is not None and spec.sha256 == sha:
            return src.tree
    return None
