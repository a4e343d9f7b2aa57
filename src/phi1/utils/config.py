"""Typed dataclass configs from YAML/dicts: unknown fields and wrong types fail naming the field.

`build(cls, data, where)` instantiates nested dataclasses recursively. A
dataclass may set `_shorthand_field = "name"` so that a bare string stands for
`{name: string}` (and, inside a list field, for a one-item list).
"""

from __future__ import annotations

import dataclasses
import functools
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
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
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
    """yaml.safe_load, with `2e-4`-style floats read as numbers (see `_Loader`); nesting deeper than
    the parser's recursion limit is a YAMLError ("nested too deeply"), not a RecursionError."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to read") from None


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


# ---- configs as command-line flags --------------------------------------------------------------
#
# A config dataclass is the only place its defaults live; `add_config_flags` makes one `--field-name`
# flag per field (help from the field's doc, default from the dataclass), `config_from_args` builds
# the typed config back, and `render_flags` writes the flags that reproduce a config.


class _NoneValue:
    """`--flag none` for an Optional field: the field is set to None (distinct from 'not given')."""

    def __repr__(self) -> str:
        return "none"


NONE = _NoneValue()


def field_docs(cls) -> dict[str, str]:
    """The docs of a dataclass's fields, inherited classes' too: an attribute docstring (a string
    literal right after the field), else the `# comment` that ends the field's line. Read once per
    class (parsing the source is most of the time a CLI takes to build its parser)."""
    return dict(_field_docs(cls))


@functools.lru_cache(maxsize=None)
def _field_docs(cls) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        src = textwrap.dedent("".join(lines))
        node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef))
        src_lines = src.splitlines()
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[name] = " ".join(inspect.cleandoc(nxt.value.value).split())
                continue
            parts = []
            for ln in range(stmt.lineno - 1, len(src_lines)):  # the field's comment and its continuation lines
                line = src_lines[ln]
                if ln >= stmt.end_lineno and (not line.strip().startswith("#") or ln + 1 > stmt.end_lineno + 2):
                    break
                if "#" in line and not line.split("#", 1)[0].count('"') % 2:
                    parts.append(line.split("#", 1)[1].strip())
            if parts:
                docs[name] = " ".join(parts)
    return docs


def _fields(cls):
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def field_default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def flag_name(name: str, rename: dict | None = None) -> str:
    return "--" + (rename or {}).get(name, name).replace("_", "-")


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def _scalar_parser(tp, optional: bool, flag: str):
    import argparse
    import json

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return NONE
        if typing.get_origin(tp) is typing.Literal:
            allowed = typing.get_args(tp)
            for a in allowed:
                if str(a) == text:
                    return a
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, allowed))}")
        if tp is int:
            try:
                value = float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
            if value != int(value):
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
            return int(value)
        if tp is float:
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if tp is dict or typing.get_origin(tp) is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object (e.g. '{{\"seed\": 0}}')")
            return value
        return text

    parse.__name__ = _type_name(tp)  # argparse names the type in its error line
    return parse


def _list_action():
    import argparse

    class ListAction(argparse.Action):
        """`--x a --x b` (repeatable; the first replaces the default) and `--x none` (an empty list)."""

        def __call__(self, parser, namespace, values, option_string=None):
            seen = getattr(namespace, "_phi1_lists", set())
            current = list(getattr(namespace, self.dest, None) or []) if self.dest in seen else []
            seen.add(self.dest)
            namespace._phi1_lists = seen
            setattr(namespace, self.dest, current if values is NONE else current + [values])

    return ListAction


def add_config_flags(parser, cls, *, skip=(), only=None, rename: dict | None = None, aliases: dict | None = None,
                     helps: dict | None = None) -> list[str]:
    """One `--field-name` flag per field of dataclass `cls` (dest = the field name, default None so
    the dataclass default applies); `only` limits them to those fields, `rename` gives a field another
    flag name, `aliases` extra option strings (old flag names), `helps` a help text other than the
    field's doc. Returns the field names that got a flag."""
    import argparse

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    names = []
    for f in _fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        tp, optional = _strip_optional(hints[f.name])
        default = field_default(f)
        flag = flag_name(f.name, rename)
        doc = (helps or {}).get(f.name) or docs.get(f.name, "")
        shown = "required" if default is dataclasses.MISSING else ("none" if default is None else default)
        if isinstance(shown, list):
            shown = " ".join(map(str, shown)) or "none"
        help_ = (doc + " " if doc else "") + f"(default: {shown})"
        kw: dict = dict(dest=f.name, default=None, help=help_.replace("%", "%%"))
        opts = [flag, *(aliases or {}).get(f.name, ())]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            kw.update(action=_list_action(), type=_scalar_parser(item, True, flag), metavar="VALUE")
            kw["help"] = kw["help"][:-1] + "; repeatable, none = empty)"
        else:
            kw["type"] = _scalar_parser(tp, optional, flag)
            if typing.get_origin(tp) is typing.Literal:
                kw["choices"] = list(typing.get_args(tp))
                kw["metavar"] = "{" + ",".join(map(str, kw["choices"])) + "}"
                if optional:
                    kw["choices"].append(NONE)
        parser.add_argument(*opts, **kw)
        names.append(f.name)
    return names


def fields_from_args(cls, args) -> dict:
    """The fields of dataclass `cls` that the parsed flags give (a flag left out is not there, so the
    dataclass default applies; `none` given is None)."""
    given = {}
    for f in _fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            given[f.name] = None if v is NONE else v
    return given


def config_from_args(cls, args, where: str = "config", validate: bool = True, **fixed):
    """The typed config from parsed flags (and `fixed` fields): flags left out keep the dataclass
    default; `build` checks the types (naming the field) and `.validate()` runs when the class has one."""
    cfg = build(cls, {**fields_from_args(cls, args), **fixed}, where)
    if validate and hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def changed_fields(cfg) -> dict:
    """The fields of a config that differ from the dataclass defaults."""
    out = {}
    for f in _fields(type(cfg)):
        v = getattr(cfg, f.name)
        if field_default(f) is dataclasses.MISSING or v != field_default(f):
            out[f.name] = v
    return out


def render_flags(cfg, *, skip=(), rename: dict | None = None) -> list[str]:
    """The flags (argv items) that reproduce `cfg` through `add_config_flags`: only the fields that
    differ from the default. Parsing them back gives an equal config."""
    import json

    out: list[str] = []
    for name, v in changed_fields(cfg).items():
        if name in skip:
            continue
        flag = flag_name(name, rename)
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, list):
            out += [x for item in v for x in (flag, str(item))] if v else [flag, "none"]
        elif v is None:
            out += [flag, "none"]
        elif isinstance(v, dict):
            out += [flag, json.dumps(v, sort_keys=True)]
        else:
            out += [flag, repr(v) if isinstance(v, float) else str(v)]
    return out


# ---- recipe comments: `key: value   # TYPE; DEFAULT — meaning` -----------------------------------

_COMMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:.*?#\s*([^;#]+?)\s*;\s*([^—#]*?)\s*(?:—|--|$)")


def _type_text(tp) -> str:
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        name = f"list[{_type_text(typing.get_args(tp)[0])}]"
    elif typing.get_origin(tp) is typing.Literal:
        name = "str" if all(isinstance(a, str) for a in typing.get_args(tp)) else "int"
    else:
        name = _type_name(tp)
    return name + (" | None" if optional else "")


def check_recipe_comments(yaml_path, cls) -> list[str]:
    """Problems with the `# TYPE; DEFAULT — meaning` comments of a recipe section of dataclass `cls`:
    each commented key must be a field, TYPE its type and DEFAULT its dataclass default. Keys without
    such a comment are not checked."""
    from pathlib import Path

    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in _fields(cls)}
    problems = []
    for i, line in enumerate(Path(yaml_path).read_text().splitlines(), 1):
        m = _COMMENT.match(line)
        if not m:
            continue
        key, ctype, cdefault = m.group(1), m.group(2).strip(), m.group(3).strip()
        where = f"{yaml_path}:{i}: {key}"
        if key not in known:
            problems.append(f"{where}: not a field of {cls.__name__}")
            continue
        want_t = _type_text(hints[key])
        if ctype.replace(" ", "") not in (want_t.replace(" ", ""), want_t.replace(" | None", "").replace(" ", "")):
            problems.append(f"{where}: comment says type {ctype}, the code says {want_t}")
        default = field_default(known[key])
        if cdefault and default is not dataclasses.MISSING:
            try:
                said = load_yaml(cdefault.replace("_", ""))
            except yaml.YAMLError:
                said = cdefault
            if said != default and not (said in (None, "none", "None") and default is None):
                problems.append(f"{where}: comment says default {cdefault}, the code says {default!r}")
    return problems
