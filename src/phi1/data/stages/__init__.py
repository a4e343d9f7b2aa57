"""The registry of data stage kinds: one module per kind, each exporting one `StageKind` record
(`phi1.data.stages.base`) named `KIND`.

Everything else is generated from the records: the `phi1 data <kind>` commands and their flags
(`phi1.data.stages.cli`), the pipeline YAML's stage kinds and schema (`phi1.data.pipeline`), and the
demo's data section and stage table (`phi1.demo`).

Adding a kind: write `phi1/data/stages/<kind>.py` (its config dataclass, its datatrove steps, its
block builder, its file-in/file-out run function and `KIND = StageKind(...)`) and add its module to
`KIND_MODULES`; a kind outside phi1 registers through the entry-point group `phi1.data_stages`
(`name = "package.module"`, a module with `KIND`), or in-process with `register(kind)`.
"""

from __future__ import annotations

import importlib

# The built-in kinds, in the order of the demo's data half and of `phi1 data --help`.
KIND_MODULES = (
    ("phi1.data.stages.collect", "collect"),
    ("phi1.data.stages.exact_dedup", "exact-dedup"),
    ("phi1.data.stages.dedup", "dedup"),
    ("phi1.data.stages.annotate", "annotate"),
    ("phi1.data.stages.classify", "classify"),
    ("phi1.data.stages.score", "score"),
    ("phi1.data.stages.filter", "filter"),
    ("phi1.data.stages.decontaminate", "decontaminate"),
    ("phi1.data.stages.exercises", "exercises"),
)
ENTRY_POINTS = "phi1.data_stages"

# Names kinds had before they had one name each: pipeline files and commands that use them get the new one.
RENAMED = {"classify-train": "classify", "classify-score": "score", "mine-exercises": "exercises"}

_extra: dict = {}  # kinds registered in-process (`register`)
_table: dict | None = None


def builtin_names() -> tuple[str, ...]:
    return tuple(name for _, name in KIND_MODULES)


def _plugins() -> dict:
    from importlib.metadata import entry_points

    out = {}
    for ep in entry_points(group=ENTRY_POINTS):
        kind = getattr(importlib.import_module(ep.value), "KIND")
        out[kind.name] = kind
    return out


def kinds() -> dict:
    """Every stage kind by name: the built-in ones, then plugins, then kinds registered in-process."""
    global _table
    if _table is None:
        table = {}
        for module, name in KIND_MODULES:
            kind = importlib.import_module(module).KIND
            assert kind.name == name, (module, kind.name)
            table[name] = kind
        for name, kind in _plugins().items():
            table.setdefault(name, kind)
        _table = table
    return {**_table, **_extra}


def get(name: str, where: str = "stage kind"):
    """The kind called `name`, or one clear error naming the allowed kinds (and a renamed kind's new name)."""
    from phi1.errors import ConfigError

    if name in _extra:
        return _extra[name]
    module = dict((n, m) for m, n in KIND_MODULES).get(name)
    if module is not None:  # a built-in kind: its module alone (a command that runs one kind imports one)
        return importlib.import_module(module).KIND
    table = kinds()
    if name in table:
        return table[name]
    if name in RENAMED:
        raise ConfigError(f"{where}: {name!r} is now called {RENAMED[name]!r}; write {RENAMED[name]}")
    raise ConfigError(f"{where}: {name!r} is not a stage kind; allowed: {sorted(table)}")


def register(kind) -> None:
    """Add a kind in-process (tests, notebooks); a module of its own with `KIND` is the lasting way."""
    _extra[kind.name] = kind


def unregister(name: str) -> None:
    _extra.pop(name, None)
