"""The CLI's promises, checked over the whole command table so that a new command is covered too.

- Every leaf command declares its path arguments (`declare_io`).
- Output equals input: for every command and every output it declares (and the files it
  writes beside an output), pointing it at an input (directly, through `./`, or through a
  symlink) is refused with exit 2 before the command runs, and the input is untouched.
- Fuzz: every command run with bad files (missing, a directory, empty, random bytes, garbage
  text) and bad flag values exits 2 with exactly one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phi1.cli import build_parser, main
from phi1.utils.cliio import io_spec, walk_commands

# Leaf commands that read or write no path a user gives.
NO_PATHS: set[tuple[str, ...]] = set()

# An empty JSONL is a valid input with no records for the data stages; an empty file is never
# a valid config, model or recipe.
EMPTY_IS_BAD = {("train",), ("data", "run"), ("demo",), ("ablate",), ("generate",), ("serve",),
                ("model", "info"), ("model", "init"), ("eval", "loss"), ("eval", "humaneval"), ("eval", "mbpp"),
                ("eval", "judge"), ("data", "pack"), ("tokenizer", "train"), ("report",)}
VALID_INPUTS = {("directory", ("data", "collect"))}  # collect's sources are directories

ENDPOINT = "http://127.0.0.1:9/v1"  # nothing listens on the discard port


@functools.cache
def _leaves() -> tuple:
    return tuple(walk_commands(build_parser()))


def leaves():
    """Every leaf command: the whole CLI built once (half a second) for the hundreds of cases."""
    return list(_leaves())


def _required_fill(parser: argparse.ArgumentParser, spec: dict, paths: dict[str, str]) -> list[str]:
    """argv that satisfies the parser's required arguments; path dests take `paths[dest]`."""
    argv: list[str] = []
    positionals: list[str] = []
    required = [a for a in parser._actions if a.required or (not a.option_strings and a.nargs not in ("?", "*"))]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            required.append(group._group_actions[0])
    for a in required:
        if isinstance(a, argparse._SubParsersAction) or a.dest in ("help", argparse.SUPPRESS):
            continue
        if a.dest in paths:
            value = paths[a.dest]
        elif a.choices:
            value = str(sorted(a.choices)[0])
        elif "endpoint" in a.dest:
            value = ENDPOINT
        elif a.dest == "preset":
            value = "micro"
        elif a.type is int:
            value = "1"
        elif a.type is float:
            value = "0.5"
        else:
            value = "x"
        if a.option_strings:
            argv += [a.option_strings[0], value]
        else:
            positionals.append(value)
    return positionals + argv


def _path_dests(spec: dict) -> set[str]:
    return set(spec["inputs"]) | set(spec["outputs"]) | set(spec["out_dirs"])


def _option_for(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    found = [a for a in parser._actions if a.dest == dest]
    return found[0] if found else None


class _Ran(Exception):
    """Raised in place of a command: the CLI let it run."""


def _run_in_process(argv: list[str], capsys, *, func_guard: bool = False) -> tuple[int, str]:
    """phi1's main in this process; returns (exit status, stderr)."""
    import phi1.cli as cli

    real_build = cli.build_parser

    def guarded(*a, **kw):
        parser = real_build(*a, **kw)
        if func_guard:
            for _, leaf in walk_commands(parser):
                def boom(args):
                    raise _Ran(" ".join(argv))
                leaf.set_defaults(func=boom)
        return parser

    cli.build_parser = guarded
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        cli.build_parser = real_build
    err = capsys.readouterr().err
    return rc, err


def test_every_command_declares_its_paths():
    missing = [" ".join(prefix) for prefix, p in leaves() if io_spec(p) is None and prefix not in NO_PATHS]
    assert not missing, f"commands without declare_io(...): {missing}"
    # Every argument whose name says it is a path is declared as one.
    pathlike = ("out", "input", "rejected", "report", "cache", "model", "model_dir", "tokenizer", "config",
                "pipeline", "samples", "data", "spec", "prompts", "sources", "workdir", "classifier", "recipe", "run_dir")
    undeclared = []
    for prefix, p in leaves():
        spec = io_spec(p)
        if spec is None:
            continue
        flags = {o for a in p._actions for o in a.option_strings}
        for a in p._actions:
            if a.dest not in pathlike or a.dest in _path_dests(spec):
                continue
            if a.dest == "model" and ({"--endpoint", "--judge-endpoint"} & flags):
                continue  # the model name served at an endpoint, not a path
            undeclared.append(f"{' '.join(prefix)} {a.dest}")
    assert not undeclared, f"path arguments missing from declare_io: {undeclared}"


def _output_cases():
    for prefix, p in leaves():
        spec = io_spec(p)
        if not spec:
            continue
        targets = [(d, "") for d in spec["outputs"] + spec["out_dirs"]]
        targets += [(d, suf) for d, sufs in spec["derived"].items() for suf in sufs]
        for dest, suffix in targets:
            if not spec["inputs"]:
                continue
            for how in ("same", "dot", "symlink"):
                yield pytest.param(prefix, dest, suffix, how, id=f"{'-'.join(prefix)}:{dest}{suffix}:{how}")


@pytest.mark.parametrize("prefix,dest,suffix,how", list(_output_cases()))
def test_output_equal_to_input_is_refused(prefix, dest, suffix, how, tmp_path, capsys, monkeypatch):
    parser = dict(leaves())[prefix]
    spec = io_spec(parser)
    monkeypatch.chdir(tmp_path)
    in_dest = spec["inputs"][0]
    base = "victim.jsonl"
    victim = tmp_path / (base + suffix)
    payload = b'{"id": "a", "text": "def f():\\n    return 1\\n", "meta": {}}\n' * 10
    if dest in spec["out_dirs"]:
        victim = tmp_path / "victimdir"
        victim.mkdir()
        (victim / "keep.txt").write_bytes(payload)
        input_value, out_value = str(victim), victim.name
    else:
        victim.write_bytes(payload)
        input_value = str(victim)
        out_value = base  # OUT + suffix == the input
        if not suffix:
            out_value = victim.name
    if how == "dot":
        out_value = "./" + out_value
    elif how == "symlink":
        link = tmp_path / "link"
        target = victim if not suffix else tmp_path / base
        if suffix:
            # OUT is a symlink whose derived file lands on the input: link the directory instead.
            (tmp_path / "sub").symlink_to(tmp_path)
            out_value = "sub/" + base
        else:
            link.symlink_to(target)
            out_value = str(link)
    paths = {d: str(tmp_path / f"fresh-{d}") for d in _path_dests(spec)}
    paths[in_dest] = input_value
    paths[dest] = out_value
    argv = list(prefix) + _required_fill(parser, spec, paths)
    for d in (in_dest, dest):  # optional path flags are not filled by _required_fill
        a = _option_for(parser, d)
        if a is not None and a.option_strings and a.option_strings[0] not in argv:
            argv += [a.option_strings[0], paths[d]]
    before = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and not f.is_symlink()}
    rc, err = _run_in_process(argv, capsys, func_guard=True)
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phi1: error:") and "same" in lines[0], err
    after = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and not f.is_symlink()}
    assert after == before


# ---------------------------------------------------------------------------------------------
# Fuzz


def _bad_files(root: Path) -> dict[str, str]:
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.jsonl").write_bytes(b"")
    (root / "random.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (root / "garbage.jsonl").write_text("not json {{{\n\x00\x01 nope\n")
    (root / "a_directory").mkdir(exist_ok=True)
    return {
        "missing": str(root / "does-not-exist.jsonl"),
        "directory": str(root / "a_directory"),
        "empty": str(root / "empty.jsonl"),
        "random": str(root / "random.bin"),
        "garbage": str(root / "garbage.jsonl"),
    }


def _fuzz_cases():
    for prefix, p in leaves():
        spec = io_spec(p)
        if spec is None or not spec["inputs"]:
            continue
        for kind in ("missing", "directory", "empty", "random", "garbage"):
            yield pytest.param(prefix, kind, id=f"{'-'.join(prefix)}:{kind}")
        yield pytest.param(prefix, "flag-values", id=f"{'-'.join(prefix)}:flag-values")


@contextlib.contextmanager
def _deadline(seconds: int, what: str):
    def on_alarm(*_):
        raise TimeoutError(f"{what} still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("prefix,kind", list(_fuzz_cases()))
def test_fuzz_bad_input_gives_one_error_line(prefix, kind, tmp_path, capsys, monkeypatch):
    parser = dict(leaves())[prefix]
    spec = io_spec(parser)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PHI1_NO_PROGRESS", "1")
    bad = _bad_files(tmp_path / "bad")
    paths = {d: str(tmp_path / f"out-{d}") for d in spec["outputs"] + spec["out_dirs"]}
    if kind == "flag-values":
        # Valid-looking paths are not needed: every typed flag gets a value of the wrong type.
        for d in spec["inputs"]:
            paths[d] = bad["missing"]
        argv = list(prefix) + _required_fill(parser, spec, paths)
        typed = [a for a in parser._actions if a.option_strings and a.type in (int, float)]
        if not typed:
            pytest.skip("no typed flags")
        for a in typed:
            case = argv + [a.option_strings[0], "not-a-number"]
            rc, err = _run_in_process(case, capsys)
            lines = err.strip().splitlines()
            assert rc == 2 and len(lines) == 1 and "Traceback" not in err, f"{case}: exit {rc}, stderr {err!r}"
        return
    for d in spec["inputs"]:
        paths[d] = bad[kind]
    argv = list(prefix) + _required_fill(parser, spec, paths)
    for d in spec["inputs"]:  # optional inputs get the bad value too
        a = _option_for(parser, d)
        if a is not None and a.option_strings and a.option_strings[0] not in argv:
            argv += [a.option_strings[0], bad[kind]]
    with _deadline(60, " ".join(argv)):
        rc, err = _run_in_process(argv, capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, f"{argv}: traceback\n{err}"
    if rc == 0 and (kind == "empty" and prefix not in EMPTY_IS_BAD or (kind, prefix) in VALID_INPUTS):
        return  # a valid input with nothing in it: an empty JSONL, an empty source directory
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith(("phi1: error:", "phi1 ")), f"{argv}: stderr {err!r}"


def test_real_process_one_line_and_exit_2(tmp_path):
    """The same promise end to end in a real process (not only through main())."""
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "x = 1\\n"}\n')
    cases = [
        ["data", "dedup", "in.jsonl", "--out", "in.jsonl"],
        ["data", "dedup", "in.jsonl", "--out", "o.jsonl", "--rejected", "./in.jsonl"],
        ["data", "dedup", "missing.jsonl", "--out", "o.jsonl"],
        ["data", "dedup", "in.jsonl", "--out", "o.jsonl", "--threshold", "abc"],
        ["data"],
        ["data", "nope"],
    ]
    for argv in cases:
        r = subprocess.run([sys.executable, "-m", "phi1", *argv], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PHI1_NO_PROGRESS": "1"})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (argv, r.returncode, r.stderr)
    assert (tmp_path / "in.jsonl").read_bytes() == b'{"text": "x = 1\\n"}\n'


def test_the_command_tables_name_what_each_module_registers():
    """`phi1 CMD` imports only CMD's module, found through cli.COMMAND_MODULES and the group tables: each
    table row must list exactly the commands its module registers, and one command's parser must be the
    same whether built alone or with all the others."""
    import phi1.cli as cli
    from phi1.data.cli import DATA_MODULES
    from phi1.eval.cli import EVAL_MODULES

    full = build_parser()
    top = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(top) == sorted(n for _, names in cli.COMMAND_MODULES for n in names)
    for group, table in (("data", DATA_MODULES), ("eval", EVAL_MODULES)):
        subs = next(a for a in top[group]._actions if isinstance(a, argparse._SubParsersAction)).choices
        assert sorted(subs) == sorted(n for _, names in table for n in names), group
    for prefix, leaf in walk_commands(full):
        alone = build_parser(list(prefix))
        for word in prefix:
            alone = next(a for a in alone._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        assert [a.dest for a in alone._actions] == [a.dest for a in leaf._actions], prefix
