"""Typed dataclass configs from YAML/dicts: unknown fields and wrong types fail naming the field.

`build(cls, data, where)` instantiates nested dataclasses recursively. A
dataclass may set `_shorthand_field = "name"` so that a bare string stands for
`{name: string}` (and, inside a list field, for a one-item list).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

from phi1.errors import ConfigError

# ---- generic typed construction -----------------------------------------------------------------


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0]) if len(errors) == 1 else ConfigError(
            f"{where}: {value!r} matches none of {' | '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        shorthand = getattr(tp, "_shorthand_field", None)
        if shorthand and isinstance(value, str):
            value = {shorthand: value}  # e.g. a bare directory is a data source of weight 1
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__} {value!r}")
        return build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item) and isinstance(value, (str, dict)):
            value = [value]  # `train: DIR` is shorthand for one source
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value):  # "2e-4" from JSON or a quoted YAML value
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover - schema bug


def build(cls, data: dict, where: str = "config"):
    """Instantiate dataclass `cls` from a dict, checking names and types recursively."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; allowed fields of {where}: {', '.join(names)}")
    kw = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kw)


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2 floats such as `2e-4` and `1E5` as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot (`2.0e-4`) and `2e-4` is a string, so
    `lr: 2e-4` or `--set optimizer.lr=2e-4` would fail as "expected a number, got str".
    """


# Exponent floats without a dot (the forms YAML 1.1 misses); ints and dotted floats keep their resolvers.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))
# A number written as a string, e.g. "2e-4" in JSON or quoted YAML: read where a float is expected.
_NUMBER = re.compile(r"^\s*[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*$")


def load_yaml(text: str):
    """yaml.safe_load, with `2e-4`-style floats read as numbers (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml_mapping(path, what: str = "config") -> dict:
    """Parse a YAML file whose top level must be a mapping; errors name the file and the problem."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give the {what} YAML file")
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {exc.start}); give the {what} YAML file") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: malformed YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        raise ConfigError(f"{p}: the {what} file is empty; expected a YAML mapping of {what} fields")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of {what} fields at the top level")
    return data
