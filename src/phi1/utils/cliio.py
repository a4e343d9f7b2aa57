"""What each command reads and writes, declared beside its flags and checked before it runs.

A command's `register` calls `declare_io(parser, inputs=..., outputs=..., out_dirs=..., derived=...)`
with the argparse dests of its input paths, output files and output directories, and the files it
derives from them. `phi1.cli.main` runs the command inside its `WritePlan` (`write_plan`), whose
guard checks every written path before the command starts (`phi1.utils.writes`), and tests walk
the declarations so that every new command is covered. `overwrite=True` adds the `--overwrite`
flag (see docs/guarantees.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

IO_KEY = "_phi1_io"


def declare_io(
    parser: argparse.ArgumentParser,
    *,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    out_dirs: tuple[str, ...] = (),
    derived: dict[str, tuple] | Callable[[argparse.Namespace], dict[str, object]] | None = None,
    updates: tuple[str, ...] = (),
    overwrite: bool = False,
) -> None:
    """Record the command's path arguments (argparse dests) and every file it derives from them.

    `derived` maps an output dest to the suffixes of the files written beside it
    (`{"out": (".report.json",)}`), or is a function of the parsed arguments returning
    `{label: path}` for every file the command writes that the user did not name (a default
    output, a summary, a PNG beside a report). `updates`: input folders the command adds its own
    files to (`phi1 report RUN_DIR`); every other written path must lie outside every input.
    """
    labels = {}
    for action in parser._actions:  # noqa: SLF001
        labels[action.dest] = action.option_strings[0] if action.option_strings else action.dest
    owner = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog
    parser.set_defaults(**{IO_KEY: {"inputs": tuple(inputs), "outputs": tuple(outputs),
                                    "out_dirs": tuple(out_dirs), "derived": derived or {},
                                    "updates": tuple(updates), "labels": labels, "owner": owner,
                                    "overwrite": overwrite}})
    if overwrite:
        parser.add_argument("--overwrite", action="store_true",
                            help="replace an existing output that phi1 did not write (derived files phi1 "
                                 "did not write, and any other file, are still never touched)")


def _flag(spec: dict, dest: str) -> str:
    return spec.get("labels", {}).get(dest) or "--" + dest.replace("_", "-")


def _values(args: argparse.Namespace, dest: str) -> list[str]:
    v = getattr(args, dest, None)
    if v is None:
        return []
    vals = [v] if isinstance(v, (str, os.PathLike)) else list(v)
    return [os.fspath(x) for x in vals if isinstance(x, (str, os.PathLike)) and not os.fspath(x).startswith("@")]


def planned_writes(args: argparse.Namespace) -> list:
    """Every path the parsed command line will write (`phi1.utils.writes.Write`), derived ones included."""
    from phi1.utils.writes import Write

    spec = getattr(args, IO_KEY, None)
    if not spec:
        return []
    writes = [Write(_flag(spec, d), Path(v)) for d in spec["outputs"] for v in _values(args, d)]
    writes += [Write(_flag(spec, d), Path(v), dir=True) for d in spec["out_dirs"] for v in _values(args, d)]
    derived = spec["derived"]
    if callable(derived):
        found = derived(args) or {}
        writes += [Write(label, Path(p), named=False) for label, p in found.items() if p]
    else:
        for dest, suffixes in derived.items():
            for suf in suffixes:
                writes += [Write(f"{_flag(spec, dest)}{suf}", Path(v + suf), named=False) for v in _values(args, dest)]
    return writes


def write_plan(args: argparse.Namespace):
    """The parsed command's `WritePlan` (None for a command that declares nothing): entering it
    checks every written path against the inputs and against what exists (docs/guarantees.md)."""
    from phi1.utils.writes import WritePlan

    spec = getattr(args, IO_KEY, None)
    if not spec:
        return None
    inputs = {_flag(spec, d): _values(args, d) for d in spec["inputs"]}
    updates = [v for d in spec["updates"] for v in _values(args, d)]
    return WritePlan(spec["owner"], planned_writes(args), inputs=inputs,
                     overwrite=bool(getattr(args, "overwrite", False)), overwrite_flag=spec["overwrite"],
                     updates=tuple(updates))


def io_spec(parser: argparse.ArgumentParser) -> dict | None:
    """The declaration of a (sub)parser, for tests that walk the command table."""
    return parser._defaults.get(IO_KEY)  # noqa: SLF001 (argparse keeps defaults there)


def walk_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Yield (argv prefix, parser) for every leaf command of the CLI."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from walk_commands(sub, prefix + (name,))


def needs_subcommand(parser: argparse.ArgumentParser):
    """The `func` of a group run without its subcommand: one error line naming the choices."""

    def run(args) -> int:
        from phi1.errors import Phi1Error

        names = [n for a in parser._actions if isinstance(a, argparse._SubParsersAction)  # noqa: SLF001
                 for n in a.choices]
        raise Phi1Error(f"`{parser.prog}` needs a command: {', '.join(names)} (see `{parser.prog} --help`)")

    return run
