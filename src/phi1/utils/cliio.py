"""What each command reads and writes, declared beside its flags and checked before it runs.

A command's `register` calls `declare_io(parser, inputs=..., outputs=..., out_dirs=...)` with
the argparse dests of its input paths, output files and output directories. `phi1.cli.main`
then refuses, before the command starts, any output that resolves to one of its inputs
(`phi1.utils.safety.refuse_overlap`), and tests walk the declarations so that every new
command is covered. `overwrite=True` adds the `--overwrite` flag (see docs/guarantees.md).
"""

from __future__ import annotations

import argparse

IO_KEY = "_phi1_io"


def declare_io(
    parser: argparse.ArgumentParser,
    *,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    out_dirs: tuple[str, ...] = (),
    derived: dict[str, tuple[str, ...]] | None = None,
    overwrite: bool = False,
) -> None:
    """Record the command's path arguments (argparse dests). `derived` maps an output dest to
    the suffixes of the files written beside it (e.g. `{"out": (".report.json",)}`)."""
    labels = {}
    for action in parser._actions:  # noqa: SLF001
        labels[action.dest] = action.option_strings[0] if action.option_strings else action.dest
    parser.set_defaults(**{IO_KEY: {"inputs": tuple(inputs), "outputs": tuple(outputs),
                                    "out_dirs": tuple(out_dirs), "derived": dict(derived or {}),
                                    "labels": labels}})
    if overwrite:
        parser.add_argument("--overwrite", action="store_true",
                            help="write into an existing output that phi1 did not write "
                                 "(files phi1 did not write are still never deleted)")


def _flag(spec: dict, dest: str) -> str:
    return spec.get("labels", {}).get(dest) or "--" + dest.replace("_", "-")


def check_io(args: argparse.Namespace) -> None:
    """Refuse outputs that resolve to inputs (or to each other) for a parsed command line."""
    from phi1.utils.safety import refuse_overlap

    spec = getattr(args, IO_KEY, None)
    if not spec:
        return

    def values(dest):
        v = getattr(args, dest, None)
        if v is None:
            return []
        vals = [v] if isinstance(v, str) else list(v)
        return [x for x in vals if isinstance(x, str) and not x.startswith("@")]

    inputs = {_flag(spec, d): values(d) for d in spec["inputs"]}
    outputs = {_flag(spec, d): values(d) for d in spec["outputs"]}
    for dest, suffixes in spec["derived"].items():
        for suf in suffixes:
            outputs[f"{_flag(spec, dest)}{suf}"] = [v + suf for v in values(dest)]
    out_dirs = {_flag(spec, d): values(d) for d in spec["out_dirs"]}
    refuse_overlap(inputs, outputs, out_dirs)


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
