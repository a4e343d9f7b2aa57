"""Stage configs as flags: generated help, render_flags round trips, one dedup threshold, recipe comments."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import phi1
from phi1.data.features import EncoderOptions
from phi1.data import stages
from phi1.data.stages.classify import ClassifyStage
from phi1.data.stages.score import ScoreStage
from phi1.utils.config import (add_config_flags, check_recipe_comments, config_from_args, field_default,
                               field_docs, render_flags)

STAGE_CONFIGS = sorted({k.config for k in stages.kinds().values()} | {EncoderOptions}, key=lambda c: c.__name__)
SRC = Path(phi1.__file__).parent


def _other_value(cls, f, tp):
    """A value of field `f` that differs from its default, derived from its type."""
    default = field_default(f)
    if default is None:
        default = {int: 0, float: 0.0, str: ""}.get(tp, default)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, type(int | None)):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return None if default is not None else _other_value(cls, f, inner)
    if origin is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != default)
    if tp is bool:
        return not default
    if tp is int:
        return default + 3
    if tp is float:
        return default + 0.25
    if tp is str:
        return default + "-x" if default else "other"
    if origin is list:
        return [] if default else ["a b.jsonl", "c"]
    if tp is dict:
        return {"seed": 0, "reasoning_effort": "low"}
    raise AssertionError(f"{cls.__name__}.{f.name}: no test value for {tp}")


def _parser(cls):
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_flags(p, cls)
    return p


@pytest.mark.parametrize("cls", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_render_flags_round_trip(cls):
    hints = typing.get_type_hints(cls)
    p = _parser(cls)
    assert config_from_args(cls, p.parse_args([]), validate=False) == cls()  # no flag: the defaults
    assert render_flags(cls()) == []
    every = cls(**{f.name: _other_value(cls, f, hints[f.name]) for f in dataclasses.fields(cls)})
    flags = render_flags(every)
    assert len([x for x in flags if x.startswith("--")]) >= len(dataclasses.fields(cls))
    assert config_from_args(cls, p.parse_args(flags), validate=False) == every
    for f in dataclasses.fields(cls):  # one field at a time, too
        one = dataclasses.replace(cls(), **{f.name: getattr(every, f.name)})
        assert config_from_args(cls, p.parse_args(render_flags(one)), validate=False) == one, f.name


@pytest.mark.parametrize("cls", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_flag_and_a_doc_in_help(cls):
    text = _parser(cls).format_help()
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert docs, cls.__name__


def _phi1(*args, **kw):
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("command", stages.builtin_names())
def test_stage_command_help_lists_every_config_field(command, capsys):
    from phi1.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    kind = stages.get(command)
    docs = field_docs(kind.config)
    for f in dataclasses.fields(kind.config):
        if f.name == kind.positional:  # collect's sources: the positional argument
            assert docs[f.name].split()[0] in out
            continue
        assert re.search(r"--" + f.name.replace("_", "-") + r"\b", out), f"{command}: --{f.name} not in help"


def test_field_docs_reads_docstrings_comments_and_inherited_fields():
    @dataclasses.dataclass
    class Base:
        a: int = 1
        """the a
        of things"""

    @dataclasses.dataclass
    class Child(Base):
        b: str = "x"  # the b, as a comment
        c: float = 0.5

    assert field_docs(Child) == {"a": "the a of things", "b": "the b, as a comment"}
    assert set(field_docs(ClassifyStage)) >= {"n_estimators", "pooling", "device"}  # EncoderOptions' too
    assert "classifier" in field_docs(ScoreStage)


def test_bad_flag_values_are_one_line_exit_2(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "x = 1", "meta": {}}\n')
    res = _phi1("data", "dedup", src, "--out", tmp_path / "o.jsonl", "--shingle", "five")
    assert res.returncode == 2 and "--shingle" in res.stderr and "'five'" in res.stderr
    res = _phi1("data", "dedup", src, "--out", tmp_path / "o.jsonl", "--threshold", "1.5")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "dedup.threshold" in res.stderr and not (tmp_path / "o.jsonl").exists()


def test_dedup_flags_reach_the_stage(tmp_path):
    import json

    src = tmp_path / "in.jsonl"
    body = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(40))
    src.write_text(json.dumps({"id": "a", "text": body}) + "\n" + json.dumps({"id": "b", "text": body + "\nz = 1"}) + "\n")
    out = tmp_path / "o.jsonl"
    res = _phi1("data", "dedup", src, "--out", out, "--num-buckets", "20", "--hashes-per-bucket", "5", "--quiet",
                "--workers", "1")
    assert res.returncode == 0, res.stderr
    rep = json.loads(Path(str(out) + ".report.json").read_text())
    assert (rep["details"]["bands"], rep["details"]["rows"]) == (20, 5)
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"]


# settings that equal 0.85 but are not the dedup threshold, by field name
OTHER_085 = {"embedding_threshold"}


def test_dedup_threshold_is_written_once():
    hits = []
    for path in SRC.rglob("*.py"):
        if path.parts[-2] == "demo":  # the lead's recipes, being restructured
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\d.])0\.85(?![\d])", line) and not any(n in line for n in OTHER_085):
                hits.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert len(hits) == 1 and "DEDUP_THRESHOLD = 0.85" in hits[0], hits


def test_recipe_comment_checker(tmp_path):
    @dataclasses.dataclass
    class Section:
        max_bytes: int = 200000
        rate: float = 0.02
        name: str | None = None

    good = tmp_path / "good.yaml"
    good.write_text("max_bytes: 5   # int; 200_000 — skip files larger than this\n"
                    "rate: 0.1      # float; 0.02 — how fast\nname: x   # str | None; null — a name\nother: 3\n")
    assert check_recipe_comments(good, Section) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_bytes: 5   # str; 200000 — skip\nrate: 0.1   # float; 0.05 — how fast\n"
                   "gone: 1   # int; 3 — removed\n")
    problems = check_recipe_comments(bad, Section)
    assert len(problems) == 3, problems
    assert "type str" in problems[0] and "default 0.05" in problems[1] and "0.02" in problems[1]
    assert "not a field" in problems[2]


# ---- every default written once: no argparse default repeats a dataclass's -------------------------

def _dataclass_defaults() -> dict:
    """field name -> [(class, default)] over every dataclass of phi1 (every module imported)."""
    import importlib
    import pkgutil

    index: dict = {}
    for m in pkgutil.walk_packages(phi1.__path__, "phi1."):
        if m.name.endswith("__main__"):
            continue
        try:
            mod = importlib.import_module(m.name)
        except ImportError:  # an optional package of another area
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__.startswith("phi1"):
                for f in dataclasses.fields(obj):
                    d = field_default(f)
                    if d is not dataclasses.MISSING:
                        index.setdefault(f.name, []).append((f"{obj.__module__}.{obj.__qualname__}", d))
    return index


def duplicated_defaults(parser, index: dict) -> list[str]:
    """Options whose argparse default is a literal equal to a dataclass field's default of the same
    name: the default would be written twice (flags of a config take None, so its default applies)."""
    from phi1.utils.cliio import walk_commands

    flag_actions = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                    argparse._VersionAction)
    bad = []
    for prefix, leaf in walk_commands(parser):
        for a in leaf._actions:
            if a.default in (None, argparse.SUPPRESS) or isinstance(a, flag_actions):
                continue
            for cls, d in index.get(a.dest, []):
                if type(d) is type(a.default) and d == a.default:
                    flag = a.option_strings[0] if a.option_strings else a.dest
                    bad.append(f"phi1 {' '.join(prefix)} {flag}: default {a.default!r} repeats {cls}.{a.dest}")
                    break
    return bad


def test_no_argparse_default_repeats_a_dataclass_default():
    from phi1.cli import build_parser

    index = _dataclass_defaults()
    assert {"timeout", "max_new_tokens", "port", "num_buckets"} <= set(index)
    bad = duplicated_defaults(build_parser(), index)
    assert not bad, "give these flags default=None and let the dataclass's default apply:\n" + "\n".join(bad)
    # ... and the check does catch one
    p = argparse.ArgumentParser(prog="t")
    p.add_subparsers().add_parser("x").add_argument("--timeout", type=float, default=120.0)
    assert duplicated_defaults(p, index) == [
        "phi1 x --timeout: default 120.0 repeats " + next(c for c, d in index["timeout"] if d == 120.0) + ".timeout"]
