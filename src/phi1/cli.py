"""The `phi1` command line: a thin dispatcher over subcommand modules.

Each area of the package owns one module with a `register(subparsers)` function
that adds its subcommands; every subcommand sets `func(args) -> int | None`.
The CLI only parses arguments and calls one library function per command.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from phi1 import __version__
from phi1.errors import Phi1Error, missing_package
from phi1.utils.cliio import write_plan
from phi1.utils.groups import register_table
from phi1.utils.safety import oserror_line

# One module per area, with the commands it registers (its `register(subparsers)`). Only the module
# of the command being run is imported, so `phi1 train` runs where the data or serving packages are not
# installed (the GPU image); the table is checked against what each module registers (tests/test_cli_safety.py).
COMMAND_MODULES = (
    ("phi1.model.cli", ("model", "tokenizer")),
    ("phi1.data.cli", ("data",)),         # one command per stage kind (phi1.data.stages), run, schema, pack
    ("phi1.train.cli", ("train",)),
    ("phi1.eval.cli", ("eval",)),         # execute/humaneval/mbpp/loss/judge
    ("phi1.infer.cli", ("generate", "serve")),
    ("phi1.synth.cli", ("synth",)),       # textbooks/exercises/stories/topics/validate
    ("phi1.inspect.cli", ("inspect", "compare")),
    ("phi1.demo.cli", ("demo", "ablate", "report", "sweep")),
    ("phi1.export.cli", ("export",)),
)
GROUPS = {"data", "eval"}  # commands whose subcommands come from several modules
WHOLE_RECIPE = {"demo", "ablate", "sweep"}  # they use every area: a missing package asks for phi1[all]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `phi1 data dedup: error: ... (see --help)`, exit 2."""

    def error(self, message: str):  # noqa: D401 (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`'s command alone (every command when argv names none, or for --help)."""
    parser = Parser(
        prog="phi1",
        description="The phi-1 recipe end to end: data, training, evaluation, serving.",
    )
    parser.add_argument("--version", action="version", version=f"phi1 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    words = [a for a in (argv or []) if not a.startswith("-")]
    command = words[0] if words else None
    only = words[1] if command in GROUPS and len(words) > 1 else None
    known = any(command in names for _, names in COMMAND_MODULES)
    table = tuple(row for row in COMMAND_MODULES if not known or command in row[1])
    # a group's register takes the subcommand: `phi1 data pack` imports the pack module alone
    register_table(sub, table, "register", "phi1", {"only": only} if command in GROUPS else {})
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PHI1_DEBUG") == "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
    )
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        plan = write_plan(args)
        with plan or contextlib.nullcontext():
            result = args.func(args)
    except Phi1Error as exc:
        if debug:
            raise
        print(f"phi1: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional package this command uses is not installed
        line = missing_package(exc, "all" if args.command in WHOLE_RECIPE else None)
        if debug or line is None:
            raise
        print(f"phi1: error: `{_command_path(parser, argv)}` needs {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phi1: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a full or read-only disk, a permission, a missing directory
        if debug:
            raise
        print(f"phi1: error: {_one_line(oserror_line(exc))}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # the reader that met it should have named the file; still one line
        if debug:
            raise
        print(f"phi1: error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
              "convert it to UTF-8 or check the path", file=sys.stderr)
        return 2
    except RecursionError:  # a reader that met it should have named the file; still one line
        if debug:
            raise
        print("phi1: error: an input is nested too deeply to read (JSON or YAML nesting past Python's recursion "
              "limit); check the input files", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("phi1: error: out of memory; use smaller inputs, batches or models", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in phi1: still one line, and a different exit status
        if debug:
            raise
        print(f"phi1: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1
    return int(result or 0)


def _command_path(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """"phi1 data dedup": the words of argv that name (sub)commands."""
    words = ["phi1"]
    for a in argv:
        subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        if a.startswith("-"):
            continue
        if not subs or a not in subs[0].choices:
            break
        words.append(a)
        parser = subs[0].choices[a]
    return " ".join(words)


def _one_line(msg) -> str:
    text = " ".join(str(msg).split())
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
