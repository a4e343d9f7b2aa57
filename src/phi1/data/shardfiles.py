"""Where records live on disk: one JSONL file, a `.jsonl.gz` file, or a directory of shards.

A stage directory (`manifest.json` + `data/*.jsonl.gz`, written by `phi1 data run`) gives the shards its
manifest lists, in order; any other directory gives every `*.jsonl` / `*.jsonl.gz` below it, sorted.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterator

from phi1.errors import Phi1Error

_SUFFIXES = (".jsonl", ".jsonl.gz")


def expand_record_inputs(paths) -> list[Path]:
    """The record files `paths` stand for, in reading order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise Phi1Error(f"{p}: input not found; run the previous stage first or check the path")
        listed = _manifest_shards(p)
        if listed is not None:
            out += listed
            continue
        if (p / "stage.json").is_file():  # a glob would also take rejected/ and half-written shards
            raise Phi1Error(f"{p}: a stage directory with no manifest.json (the stage has not finished); "
                            "run it to the end first")
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(_SUFFIXES))
        if not found:
            raise Phi1Error(f"{p}: no .jsonl or .jsonl.gz files under it; give a JSONL file or a stage directory")
        out += found
    return out


def _manifest_shards(d: Path) -> list[Path] | None:
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    shards = m.get("shards") if isinstance(m, dict) else None
    if not isinstance(shards, list):
        return None
    files = [d / (s["path"] if isinstance(s, dict) else s) for s in shards]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise Phi1Error(f"{d}: manifest.json lists {missing[0]}, which is missing; rerun the stage that wrote it")
    return files


def open_record_lines(path: str | os.PathLike) -> Iterator[bytes]:
    """Raw byte lines of a record file, gunzipping `.gz` as a stream; a damaged gzip is one clear error."""
    path = Path(path)
    if path.suffix != ".gz":
        with path.open("rb") as fh:
            yield from fh
        return
    try:
        with gzip.open(path, "rb") as fh:
            yield from fh
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise Phi1Error(f"{path}: damaged or truncated gzip ({exc}); rewrite it (rerun the stage that wrote it)") from None
