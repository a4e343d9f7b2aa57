"""The CLI's promises, checked over the whole command table so that a new command is covered too.

- Every leaf command declares its path arguments (`declare_io`).
- Every declared write (named outputs and the files derived from them): an existing foreign file
  there, an input equal to it, or an output inside an input folder is refused with exit 2
  before the command runs, and nothing changes; a file the command's ledger proves it wrote passes.
- Output equals input through `./` or a symlink is refused as well.
- Fuzz: every command run with bad files (missing, a directory, empty, random bytes, garbage
  text) and bad flag values exits 2 with exactly one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phi1.cli import build_parser, main
from phi1.utils.cliio import io_spec, planned_writes, walk_commands

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


def _argv_for(prefix, parser, spec, paths: dict[str, str]) -> list[str]:
    """argv for `prefix` with the required arguments filled, and every path dest in `paths` given
    (optional path flags included)."""
    argv = list(prefix) + _required_fill(parser, spec, paths)
    for d, value in paths.items():
        a = _option_for(parser, d)
        if a is not None and a.option_strings and not set(a.option_strings) & set(argv):
            argv += [a.option_strings[0], value]
    return argv


def _writes(argv: list[str]):
    """The parsed command line's declared writes, derived ones included (phi1.utils.cliio.planned_writes)."""
    args = build_parser(argv).parse_args(argv)
    return planned_writes(args), args


def _plan_cases():
    """(command, attack) for the attacks that run over every declared write of every command."""
    for prefix, p in leaves():
        spec = io_spec(p)
        if not spec or not (spec["outputs"] or spec["out_dirs"] or spec["derived"]):
            continue  # writes nothing the command line names (model info, generate, serve, train's config)
        for attack in ("foreign", "foreign-overwrite", "proven", "input-equal", "inside-input"):
            if attack in ("input-equal", "inside-input") and not spec["inputs"]:
                continue
            if attack == "foreign-overwrite" and not spec["overwrite"]:
                continue
            yield pytest.param(prefix, attack, id=f"{'-'.join(prefix)}:{attack}")


def _snapshot(root: Path) -> dict:
    return {f: f.read_bytes() for f in root.rglob("*") if f.is_file() and not f.is_symlink()}


PAYLOAD = b'{"id": "a", "text": "def f():\\n    return 1\\n", "meta": {}}\n' * 10


def _refused(argv, capsys, word: str | None = None):
    rc, err = _run_in_process(argv, capsys, func_guard=True)
    lines = err.strip().splitlines()
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("phi1: error:"), err
    if word:
        assert word in lines[0], err
    return lines[0]


def _let_through(argv, capsys):
    rc, err = _run_in_process(argv, capsys, func_guard=True)
    assert rc == 1 and "_Ran" in err, f"{argv}: the guard refused: exit {rc}, stderr {err!r}"


@pytest.mark.parametrize("prefix,attack", list(_plan_cases()))
def test_every_declared_write_is_guarded(prefix, attack, tmp_path, capsys, monkeypatch):
    """Over the whole command table and every path each command declares it writes (derived files
    such as OUT.summary.json included, computed from the command line as the command computes them):

    - foreign: an existing file (or a non-empty folder) that phi1 did not write is refused, exit 2;
    - foreign-overwrite: with --overwrite a named output may be replaced, a derived file never;
    - proven: a file the command's ledger entry proves it wrote (a folder its marker names) passes;
    - input-equal: an input that is a derived or named output path is refused ("same");
    - inside-input: an output inside an input folder is refused ("inside").

    The command itself never runs (its function is replaced): the guard must act before any work."""
    from phi1.utils.safety import MARKER
    from phi1.utils.writes import record

    parser = dict(leaves())[prefix]
    spec = io_spec(parser)
    monkeypatch.chdir(tmp_path)
    paths = {d: str(tmp_path / f"fresh-{d}") for d in _path_dests(spec)}
    for d in spec["updates"]:  # an input folder the command adds its own files to
        (tmp_path / f"fresh-{d}").mkdir()
    argv = _argv_for(prefix, parser, spec, paths)
    writes, args = _writes(argv)
    assert writes, f"{prefix}: declares no write"
    if attack == "inside-input":
        folder = tmp_path / "an-input-folder"
        folder.mkdir()
        (folder / "keep.txt").write_bytes(PAYLOAD)
        in_dest = spec["inputs"][0]
        named = [d for d in spec["outputs"] + spec["out_dirs"]]
        if in_dest in spec["updates"] or not named:
            pytest.skip("writes only inside its updated input")
        for d in named:
            case = dict(paths, **{in_dest: str(folder), d: str(folder / "sub" / "out")})
            before = _snapshot(tmp_path)
            _refused(_argv_for(prefix, parser, spec, case), capsys, "inside")
            assert _snapshot(tmp_path) == before and not (folder / "sub").exists()
        return
    for w in writes:
        if attack == "input-equal":
            if w.dir:
                continue
            victim = Path(w.path)
            victim.parent.mkdir(parents=True, exist_ok=True)
            victim.write_bytes(PAYLOAD)
            in_dest = spec["inputs"][0]
            case = _argv_for(prefix, parser, spec, dict(paths, **{in_dest: str(victim)}))
            again, _ = _writes(case)
            if not any(os.path.abspath(x.path) == os.path.abspath(victim) for x in again):
                victim.unlink()
                continue  # this derived path moves with the input (SAMPLES_results.jsonl): it cannot be it
            before = _snapshot(tmp_path)
            _refused(case, capsys, "same")
            assert _snapshot(tmp_path) == before
            victim.unlink()
            continue
        target = Path(w.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if w.dir:
            target.mkdir()
            (target / "keep.txt").write_bytes(PAYLOAD)
            if attack == "proven":
                (target / MARKER).write_text(json.dumps({"owner": spec["owner"]}))
        else:
            target.write_bytes(PAYLOAD)
            if attack == "proven":
                record(target, spec["owner"])
        before = _snapshot(tmp_path)
        if attack == "proven":
            _let_through(argv, capsys)
        elif attack == "foreign":
            _refused(argv, capsys, str(target.name))
        else:  # foreign-overwrite
            case = argv + ["--overwrite"]
            if w.named:
                _let_through(case, capsys)
            else:
                _refused(case, capsys, "never replaces")
        assert _snapshot(tmp_path) == before, f"{argv}: {w.label} changed"
        if w.dir:
            shutil.rmtree(target)
        else:
            target.unlink()


def test_a_proof_is_only_as_good_as_the_file_it_describes(tmp_path, capsys, monkeypatch):
    """A ledger entry proves a file only while it is the same file: replaced by the user (same name,
    new inode) or edited to another size, it is foreign again; another command's entry is no proof."""
    from phi1.utils.writes import record, written_by

    monkeypatch.chdir(tmp_path)
    f = tmp_path / "loss.json"
    f.write_text("{}")
    record(f, "eval loss")
    assert written_by(f) == "eval loss"
    f.unlink()
    f.write_text('{"mine": 1}')
    assert written_by(f) is None
    record(f, "data schema")
    line = _refused(["eval", "loss", "--model", "m", "--out", str(f)], capsys, "data schema")
    assert "was written by `phi1 data schema`" in line
    appended = tmp_path / "out.jsonl"
    appended.write_text("")
    record(appended, "synth textbooks", append=True)
    with appended.open("a") as fh:
        fh.write("{}\n")
    assert written_by(appended) == "synth textbooks"  # an appended file is proven by its inode alone


# ---------------------------------------------------------------------------------------------
# Fuzz


def _bad_files(root: Path) -> dict[str, str]:
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.jsonl").write_bytes(b"")
    (root / "random.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (root / "garbage.jsonl").write_text("not json {{{\n\x00\x01 nope\n")
    (root / "a_directory").mkdir(exist_ok=True)
    deep = 20_000  # past every parser's recursion limit (json, PyYAML: Python's 1000 frames; orjson: depth 1024)
    (root / "nested.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "x", "text": '
                                       + "[" * deep + "]" * deep + '}\n')
    return {
        "nested": str(root / "nested.jsonl"),
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
        for kind in ("missing", "directory", "empty", "random", "garbage", "nested"):
            yield pytest.param(prefix, kind, id=f"{'-'.join(prefix)}:{kind}")
        yield pytest.param(prefix, "flag-values", id=f"{'-'.join(prefix)}:flag-values")
        yield pytest.param(prefix, "absurd-values", id=f"{'-'.join(prefix)}:absurd-values")


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
    if kind == "absurd-values":
        # Well-typed but absurd: every numeric flag at 2**64, 1e8, 0 and -1, one at a time. The command
        # may run (exit 0) or refuse (exit 2, one line); it never crashes (exit 1) or hangs.
        typed = [a for a in parser._actions if a.option_strings and a.type in (int, float)]
        if not typed:
            pytest.skip("no typed flags")
        for d in spec["inputs"]:
            paths[d] = bad["missing"]
        # Every input (optional ones too) is missing, so nothing slow starts (a synth job against a dead
        # endpoint); what is exercised is the checking of values that happens before inputs are read.
        argv = _argv_for(prefix, parser, spec, {d: bad["missing"] for d in spec["inputs"]} | paths)
        crashed = []
        for a in typed:
            for value in (str(2**64), "100000000", "0", "-1"):
                case = [x for x in argv]
                if a.option_strings[0] in case:  # a required flag: replace its filled value
                    i = case.index(a.option_strings[0])
                    case[i + 1] = value
                else:
                    case += [a.option_strings[0], value]
                with _deadline(60, " ".join(case)):
                    rc, err = _run_in_process(case, capsys)
                lines = err.strip().splitlines()
                if not (rc in (0, 2) and len(lines) <= 1 and "Traceback" not in err):
                    crashed.append(f"{a.option_strings[0]} {value}: exit {rc}, {err.strip()[:200]!r}")
        assert not crashed, crashed
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


@pytest.mark.parametrize("how", ["dot", "symlink"])
def test_an_output_reaching_an_input_through_dot_or_symlink_is_refused(how, tmp_path, capsys, monkeypatch):
    """The guard compares real files: `./in.jsonl` and a symlink to it are the input too, for named
    outputs and for derived ones (OUT.report.json landing on the input through a linked folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_bytes(PAYLOAD)
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    (tmp_path / "sub").symlink_to(tmp_path)
    (tmp_path / "x.jsonl.report.json").write_bytes(PAYLOAD)
    out = "./in.jsonl" if how == "dot" else "link.jsonl"
    before = _snapshot(tmp_path)
    _refused(["data", "dedup", "in.jsonl", "--out", out], capsys, "same")
    _refused(["data", "dedup", "x.jsonl.report.json", "--out", "sub/x.jsonl"], capsys, "same")
    _refused(["eval", "execute", "--samples", "r.summary.json", "--out", "r.jsonl"]
             if how == "dot" else ["eval", "execute", "--samples", "sub/r.summary.json", "--out", "r.jsonl"],
             capsys, None)
    assert _snapshot(tmp_path) == before


def test_a_rerun_replaces_its_own_file_and_nothing_else(tmp_path):
    """End to end in real processes: `data schema --out` writes and records its file; the same command
    replaces it without --overwrite; once the user has replaced the file it is refused again; another
    command refuses it as `data schema`'s."""
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "phi1", *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PHI1_NO_PROGRESS": "1"})

    assert run("data", "schema", "--out", "s.json").returncode == 0
    first = (tmp_path / "s.json").read_text()
    assert json.loads((tmp_path / ".phi1-files.json").read_text())["files"]["s.json"]["owner"] == "data schema"
    assert run("data", "schema", "--out", "s.json").returncode == 0 and (tmp_path / "s.json").read_text() == first
    (tmp_path / "s.json").unlink()
    (tmp_path / "s.json").write_text("my notes\n")
    r = run("data", "schema", "--out", "s.json")
    assert r.returncode == 2 and "no phi1 record" in r.stderr and (tmp_path / "s.json").read_text() == "my notes\n"
    assert run("data", "schema", "--out", "t.json").returncode == 0
    r = run("eval", "execute", "--samples", "s.json", "--out", "t.json")
    assert r.returncode == 2 and "was written by `phi1 data schema`" in r.stderr, r.stderr
