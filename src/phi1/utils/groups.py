"""Subcommand groups (`phi1 data ...`, `phi1 eval ...`) assembled from several modules.

A group lists the modules that contribute commands to it; each module defines
`register_<group>(subparsers)`. This keeps each stage's CLI beside its code.
"""

from __future__ import annotations

import argparse
import importlib

from phi1.utils.cliio import needs_subcommand


def add_group(subparsers, name: str, help: str, modules: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help)
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    hook = f"register_{name}"
    for mod_name in modules:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if mod_name == exc.name or mod_name.startswith(f"{exc.name}."):
                continue
            raise
        getattr(module, hook)(sub)
    parser.set_defaults(func=needs_subcommand(parser))
    return parser
