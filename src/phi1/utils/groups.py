"""Command tables: the top-level commands (`phi1 train`, ...) and the groups (`phi1 data ...`,
`phi1 eval ...`) are each a table of (module, command names).

Each module defines a register hook that adds its commands. Only the modules a command line names are
imported (`phi1 train` never imports the data stages, so it runs where datatrove is not installed);
a module that needs a package that is not installed still shows its commands, and each of them says, in
one line, which package is missing and which extra installs it.
"""

from __future__ import annotations

import argparse
import importlib

from phi1.errors import Phi1Error, missing_package
from phi1.utils.cliio import needs_subcommand

Table = tuple[tuple[str, tuple[str, ...]], ...]


def register_table(subparsers, table: Table, hook: str, prefix: str, hook_kw: dict | None = None) -> None:
    """Call each module's register hook; a module that needs a missing package gets stand-in commands
    that name the package and the extra that installs it."""
    import inspect

    for mod_name, names in table:
        try:
            fn = getattr(importlib.import_module(mod_name), hook)
            kw = {k: v for k, v in (hook_kw or {}).items() if k in inspect.signature(fn).parameters}
            fn(subparsers, **kw)
        except ModuleNotFoundError as exc:
            line = missing_package(exc)
            if line is None:
                raise
            for name in names:  # what the module registered before it failed goes: all its commands say why
                subparsers._name_parser_map.pop(name, None)
                subparsers._choices_actions[:] = [a for a in subparsers._choices_actions if a.dest != name]
                _unavailable(subparsers, f"{prefix} {name}", name, line)


def _unavailable(subparsers, full: str, name: str, line: str) -> None:
    # no option prefix: every word after the command, --flags included, is taken and ignored
    p = subparsers.add_parser(name, help=f"(unavailable: {line})", add_help=False, prefix_chars="\0",
                              description=f"`{full}` is unavailable: {line}")
    p.add_argument("rest", nargs="*")

    def refuse(args):
        raise Phi1Error(f"`{full}` needs {line}")

    p.set_defaults(func=refuse)


def add_group(subparsers, name: str, help: str, table: Table, only: str | None = None) -> argparse.ArgumentParser:
    """`phi1 NAME ...` from the modules of `table`; with `only` (a subcommand), its module alone."""
    parser = subparsers.add_parser(name, help=help, description=help)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    if only is not None and any(only in names for _, names in table):
        table = tuple(row for row in table if only in row[1])
    register_table(sub, table, f"register_{name}", f"phi1 {name}", {"only": only} if only is not None else None)
    parser.set_defaults(func=needs_subcommand(parser))
    return parser
