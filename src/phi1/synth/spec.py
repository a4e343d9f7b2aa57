"""Generation specs: the YAML files that say what a synthetic-data job asks for.

A spec names its `kind` (textbooks, exercises, stories), the prompt `template`
with `{placeholders}`, the pools the prompt builder samples from, and default
sampling parameters. The shipped defaults live in `phi1/recipes/synth/`.
Pools are either lists (uniform choice) or mappings `item: weight`.
"""

from __future__ import annotations

import hashlib
import json
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
    "textbooks": {"topic", "subtopic", "concepts", "audience", "style", "seed_words"},
    "exercises": {"function_name", "difficulty", "concepts", "topic", "n_asserts"},
    "stories": {"noun", "verb", "adjective", "features"},
}
# Pools each kind requires (beyond the common keys).
REQUIRED = {
    "textbooks": ("topics", "audiences", "styles", "seed_words"),
    "exercises": ("name_parts", "difficulties", "concepts", "topics"),
    "stories": ("vocabulary", "features"),
}
COMMON = {"kind", "api", "system", "template", "sampling", "description"}
OPTIONAL = {
    "textbooks": {"concepts_per_prompt", "seed_words_per_prompt"},
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

    def get(self, key: str, default=None):
        return self.pools.get(key, default)


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
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False)
    return Spec(kind, template, pools, dict(sampling), raw.get("system"), api, source,
                hashlib.sha256(canonical.encode()).hexdigest())


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
