"""Readers for the table sources of the collect stage: JSONL / .jsonl.gz, Parquet (The Stack's layout),
`datasets` saved with `save_to_disk`, and the Hugging Face hub in streaming mode.

Every reader is a datatrove reader (`JsonlReader`, `ParquetReader`, `HuggingFaceDatasetReader`) with one
adapter (`RowAdapter.row_document`) mapping a row to a phi1 Document:

    id    "<source name>/<file relative path>:<row>" (files) or "<source name>/<shard>:<row>" (datasets),
          where <row> is the row's 0-based index in its file or shard (for JSONL: line number - 1);
          so ids are stable and do not depend on the task count
    text  the text column: `text_column`, or by default 'content' when the table has it, else 'text'
    meta  {"source": <the source as given>} plus the columns listed in `meta_columns` (no others)

A row whose text is missing or not a string is marked `no_text` (undecodable bytes: `undecodable`) and
dropped with that reason by `CollectChecks`, which also applies the file checks to every row.

Spreading over tasks: the files of a source (listed once, at build time) go to task i mod tasks, as
datatrove shards files; when a source has fewer files than there are tasks, every task reads all of
them and keeps rows i mod tasks. Datasets are read the same way through `datasets` iterable datasets,
whose shards play the role of files: a saved dataset is opened with `load_from_disk` and turned into
an iterable dataset with one shard per `.arrow` file, a hub dataset is `load_dataset(...,
streaming=True)`; everything after that is one code path (`DatasetRowsReader.run`).

The `plan_*` functions run at build time, in the process that starts the pipeline: they list the
files, check the text column against each file's columns, and raise `Phi1Error` (one line, exit 2)
naming the glob or the column when something is wrong.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import glob as _glob
import os
from pathlib import Path
from typing import Any, Iterable

from datatrove.data import Document
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader

from phi1.utils.io import json_loads, temp_beside
from phi1.errors import Phi1Error

TABLE_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".jsonl.gz": "jsonl"}
TEXT_COLUMNS = ("content", "text")  # the default text column: the first of these a table has
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_TABLE_GLOBS = "*.parquet, *.jsonl or *.jsonl.gz"


def table_format(name: str) -> str | None:
    for suffix, fmt in TABLE_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


# ---- row -> Document ------------------------------------------------------------------------------

def _meta_value(v: Any) -> Any:
    """A JSON-writable form of a table value."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (list, tuple)):
        return [_meta_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _meta_value(x) for k, x in v.items()}
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, decimal.Decimal):
        return str(v)
    return str(v)


class RowAdapter:
    """Maps a table row to a phi1 Document (see the module docstring); mixed into each reader."""

    def _init_rows(self, label: str, id_prefix: str, text_column: str, meta_columns: list[str]) -> None:
        self.label, self.id_prefix = label, id_prefix
        self.text_column, self.meta_columns = text_column, list(meta_columns)

    @property
    def columns(self) -> list[str]:
        """The columns a reader needs: the text column and the listed meta columns."""
        return list(dict.fromkeys([self.text_column, *self.meta_columns]))

    def row_document(self, row: dict, where: str, index: int) -> Document:
        text = row.get(self.text_column)
        meta: dict[str, Any] = {"source": self.label}
        for col in self.meta_columns:
            if col in row and col != self.text_column:
                meta[col] = _meta_value(row[col])
        problem = None
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                text, problem = "", "undecodable"
        elif not isinstance(text, str):
            text, problem = "", "no_text"
        if problem:
            meta["collect_problem"] = problem
        self.stat_update("read")
        return Document(text=text, id=f"{self.id_prefix}{where}:{index}", metadata=meta)


class _TableFiles(RowAdapter):
    """File sharding of a source's listed files: file i in task i mod tasks, or, with fewer files than
    tasks, every file in every task and row i mod tasks (a running count over the source's rows)."""

    def _init_files(self, paths_file: str) -> None:
        self.paths_list = paths_file

    def _files(self) -> list[str]:
        with open(self.paths_list) as fh:
            return [ln.rstrip("\n") for ln in fh if ln.strip()]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        files = self._files()
        if len(files) >= world_size:
            for rel in files[rank::world_size]:
                self.stat_update("input_files")
                yield from self.read_rows(rel, None)
        else:
            count = [0]
            for rel in files:
                yield from self.read_rows(rel, (rank, world_size, count))

    @staticmethod
    def _mine(pick) -> bool:
        """With row sharding, whether the next row is this task's (and count it)."""
        if pick is None:
            return True
        rank, world_size, count = pick
        mine = count[0] % world_size == rank
        count[0] += 1
        return mine


class JsonlRowsReader(_TableFiles, JsonlReader):
    """JSONL / .jsonl.gz rows, decoded strictly: a line that is not UTF-8 or not a JSON object fails the
    task with `file:line`, or with `skip_bad_lines` is skipped and counted (`bad_utf8`, `bad_json`)."""

    name = "phi1 JSONL table reader"

    def __init__(self, root: str, paths_file: str, label: str, id_prefix: str, text_column: str,
                 meta_columns: list[str], skip_bad_lines: bool = False):
        super().__init__(root, paths_file=paths_file, compression="infer", add_file_path=False)
        self._init_rows(label, id_prefix, text_column, meta_columns)
        self._init_files(paths_file)
        self.skip_bad_lines = skip_bad_lines

    def read_rows(self, rel: str, pick):
        from phi1.data.records import SKIP_HINT, parse_object_line

        with self.data_folder.open(rel, "rb", compression=self.compression) as fh:
            for index, raw in enumerate(fh):
                if not raw.strip() or not self._mine(pick):
                    continue
                row, kind, why = parse_object_line(raw)
                if why is not None:
                    if not self.skip_bad_lines:
                        raise Phi1Error(f"{self.data_folder.resolve_paths(rel)}:{index + 1}: {why}; "
                                        f"fix the line or {SKIP_HINT}")
                    self.stat_update(kind)
                    continue
                yield self.row_document(row, rel, index)


class ParquetRowsReader(_TableFiles, ParquetReader):
    """Parquet rows (The Stack's layout: text in `content`), reading only the columns it keeps."""

    name = "phi1 Parquet table reader"

    def __init__(self, root: str, paths_file: str, label: str, id_prefix: str, text_column: str,
                 meta_columns: list[str], batch_size: int = 1000):
        super().__init__(root, paths_file=paths_file, batch_size=batch_size)
        self._init_rows(label, id_prefix, text_column, meta_columns)
        self._init_files(paths_file)

    def read_rows(self, rel: str, pick):
        import pyarrow.parquet as pq

        with self.data_folder.open(rel, "rb") as f, pq.ParquetFile(f) as pqf:
            names = set(pqf.schema_arrow.names)
            cols = [c for c in self.columns if c in names]
            index = 0
            for batch in pqf.iter_batches(batch_size=self.batch_size, columns=cols):
                for row in batch.to_pylist():
                    if self._mine(pick):
                        yield self.row_document(row, rel, index)
                    index += 1


def quiet_datasets() -> None:
    """No progress bars or info logging from `datasets` (they would reach the console)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


class DatasetRowsReader(RowAdapter, HuggingFaceDatasetReader):
    """Rows of a `datasets` dataset saved to disk (`load_from_disk=True`) or on the Hugging Face hub
    (streaming), both as an iterable dataset whose shards are spread over tasks like files."""

    name = "phi1 datasets reader"

    def __init__(self, dataset: str, label: str, text_column: str, meta_columns: list[str], *,
                 load_from_disk: bool, split: str | None = None, dataset_options: dict | None = None,
                 batch_size: int = 1000):
        super().__init__(dataset, dataset_options=None if load_from_disk else dict(dataset_options or {}),
                         streaming=not load_from_disk, batch_size=batch_size, load_from_disk=load_from_disk)
        self.split = split
        self._init_rows(label, f"{label}/", text_column, meta_columns)

    def iterable(self):
        """The dataset as a `datasets.IterableDataset` (the one place the two sources differ)."""
        quiet_datasets()
        if self.load_from_disk:
            from datasets import DatasetDict, load_from_disk

            ds = load_from_disk(self.dataset)
            if isinstance(ds, DatasetDict):
                ds = ds[self.split]
            return ds.to_iterable_dataset(num_shards=max(1, min(len(ds.cache_files), len(ds) or 1)))
        from datasets import load_dataset

        return load_dataset(self.dataset, **self.dataset_options, streaming=True)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        ds = self.iterable()
        if ds.column_names:
            ds = ds.select_columns([c for c in self.columns if c in ds.column_names])
        n = ds.n_shards
        if n >= world_size:
            for k in range(rank, n, world_size):
                self.stat_update("input_shards")
                yield from self._shard_rows(ds, n, k, None)
        else:
            count = [0]
            for k in range(n):
                yield from self._shard_rows(ds, n, k, (rank, world_size, count))

    def _shard_rows(self, ds, n: int, k: int, pick) -> Iterable[Document]:
        shard = ds.shard(num_shards=n, index=k, contiguous=True) if n > 1 else ds
        index = 0
        for batch in shard.iter(batch_size=self.batch_size):
            keys = list(batch)
            for values in zip(*(batch[key] for key in keys)):
                if _TableFiles._mine(pick):
                    yield self.row_document(dict(zip(keys, values)), f"{k:05d}", index)
                index += 1


# ---- build time: list, check, plan ----------------------------------------------------------------

def resolve_text_column(source: str, where: str, columns: list[str], text_column: str | None) -> str:
    """The text column of a table with these columns, or a one-line error naming it and the columns."""
    if text_column:
        if text_column in columns:
            return text_column
        raise Phi1Error(f"collect: {source}: no text column {text_column!r} in {where}; its columns: "
                        f"{columns}; set text_column to one of them")
    for col in TEXT_COLUMNS:
        if col in columns:
            return col
    raise Phi1Error(f"collect: {source}: no text column in {where} (looked for {' or '.join(map(repr, TEXT_COLUMNS))});"
                    f" its columns: {columns}; set text_column to one of them")


def _jsonl_columns(path: Path) -> list[str] | None:
    """The keys of the first JSON object in a JSONL file (None when its first lines are not objects)."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for i, raw in enumerate(fh):
                if i >= 100:
                    return None
                if raw.strip():
                    row = json_loads(raw)
                    return list(row) if isinstance(row, dict) else None
    except (OSError, ValueError, EOFError):
        return None  # the reader reports the bad line with its number, or skips it with skip_bad_lines
    return []


def _parquet_columns(path: Path, source: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise Phi1Error(f"collect: {source}: {path}: cannot read as Parquet ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the file") from None


def list_tables(root: Path) -> list[str]:
    """Relative paths of the .parquet / .jsonl / .jsonl.gz files under `root`, sorted; hidden folders
    are skipped, and of a phi1 stage directory only its `data/` shards are read."""
    if (root / "stage.json").is_file() and (root / "data").is_dir():
        return [f"data/{p.name}" for p in sorted((root / "data").iterdir()) if table_format(p.name) == "jsonl"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if table_format(name) and not name.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def glob_tables(pattern: str) -> tuple[Path, list[str]]:
    """(root, relative paths) of the table files a glob matches; root is its folder before any magic."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    matches = sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        raise Phi1Error(f"collect: the glob {pattern!r} matches no files")
    rels = [os.path.relpath(p, root) for p in matches if table_format(os.path.basename(p))]
    if not rels:
        raise Phi1Error(f"collect: the glob {pattern!r} matches {len(matches)} file(s) but none is {_TABLE_GLOBS}")
    return root, rels


def plan_tables(source: str, root: Path, rels: list[str], name: str, work: Path, slot: int,
                text_column: str | None) -> list[dict]:
    """One plan entry per table format among `rels`: its files listed in `work/` for the readers, the text
    column checked against every file's columns. Returns the entries (json-serialisable)."""
    entries = []
    for fmt in ("parquet", "jsonl"):
        files = [r for r in rels if table_format(r) == fmt]
        if not files:
            continue
        col, seen = None, []
        for rel in files:
            path = root / rel
            cols = _parquet_columns(path, source) if fmt == "parquet" else _jsonl_columns(path)
            if cols is None:
                continue
            here = resolve_text_column(source, str(path), cols, text_column or col)
            col = col or here
            seen.extend(c for c in cols if c not in seen)
        paths_file = work / f"tables-{slot:02d}-{fmt}.txt"
        tmp = temp_beside(paths_file)
        tmp.write_text("".join(f"{r}\n" for r in files))
        os.replace(tmp, paths_file)
        entries.append({"kind": fmt, "source": source, "root": str(root.resolve()), "paths": str(paths_file),
                        "files": len(files), "id_prefix": f"{name}/" if name else "",
                        "text_column": col or text_column or "text", "columns": seen})
    return entries


def require_datasets(source: str) -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        what = ("a dataset saved with save_to_disk" if not source.startswith("hf:")
                else "a Hugging Face hub dataset")
        raise Phi1Error(f"collect: {source}: reading {what} needs the 'datasets' package, which is not "
                        "installed; run `pip install datasets` (or export it to Parquet/JSONL)") from None


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


def plan_dataset(source: str, path: Path, split: str, text_column: str | None) -> dict:
    """A `datasets` dataset saved with `save_to_disk` (a DatasetDict: its `split`)."""
    require_datasets(source)
    quiet_datasets()
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise Phi1Error(f"collect: {source}: cannot open as a saved dataset ({_first_line(exc)})") from None
    label = path.resolve().name
    use_split = None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise Phi1Error(f"collect: {source}: no split {split!r} in the saved dataset; its splits: "
                            f"{sorted(ds)}; set hf_split")
        ds, use_split, label = ds[split], split, f"{label}/{split}"
    col = resolve_text_column(source, "the saved dataset", list(ds.column_names), text_column)
    return {"kind": "dataset", "source": source, "path": str(path.resolve()), "split": use_split, "label": label,
            "text_column": col, "columns": list(ds.column_names), "rows": len(ds)}


def parse_hf(source: str) -> tuple[str, str | None]:
    parts = source[3:].split(":")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise Phi1Error(f"collect: {source!r}: expected hf:NAME or hf:NAME:CONFIG")
    return parts[0], parts[1] if len(parts) == 2 else None


def hf_options(source: str, split: str, data_files: list[str]) -> tuple[str, dict]:
    name, config = parse_hf(source)
    opts: dict[str, Any] = {"split": split}
    if config:
        opts["name"] = config
    if data_files:
        opts["data_files"] = list(data_files)
    return name, opts


def plan_hf(source: str, split: str, data_files: list[str], text_column: str | None) -> dict:
    """A dataset on the Hugging Face hub, read in streaming mode (opened here to check its columns)."""
    require_datasets(source)
    name, opts = hf_options(source, split, data_files)
    reader = DatasetRowsReader(name, f"{source}/{split}", text_column or "text", [], load_from_disk=False,
                               dataset_options=opts)
    try:
        ds = reader.iterable()
        columns = list(ds.column_names or [])
        if not columns:
            columns = list(next(iter(ds), {}) or {})
    except Exception as exc:
        globs = f" (data_files {list(data_files)})" if data_files else ""
        raise Phi1Error(f"collect: {source}{globs}: cannot open from the Hugging Face hub in streaming mode "
                        f"({_first_line(exc)})") from None
    col = resolve_text_column(source, f"split {split!r}", columns, text_column)
    return {"kind": "hf", "source": source, "name": name, "options": opts, "label": f"{source}/{split}",
            "text_column": col, "columns": columns}


def make_reader(entry: dict, meta_columns: list[str], skip_bad_lines: bool = False):
    """The datatrove reader of one plan entry."""
    kind = entry["kind"]
    if kind == "jsonl":
        return JsonlRowsReader(entry["root"], entry["paths"], entry["source"], entry["id_prefix"],
                               entry["text_column"], meta_columns, skip_bad_lines)
    if kind == "parquet":
        return ParquetRowsReader(entry["root"], entry["paths"], entry["source"], entry["id_prefix"],
                                 entry["text_column"], meta_columns)
    require_datasets(entry["source"])
    if kind == "dataset":
        reader = DatasetRowsReader(entry["path"], entry["label"], entry["text_column"], meta_columns,
                                   load_from_disk=True, split=entry["split"])
    else:
        reader = DatasetRowsReader(entry["name"], entry["label"], entry["text_column"], meta_columns,
                                   load_from_disk=False, dataset_options=entry["options"])
    reader.label = entry["source"]  # meta.source: the source as given; the id prefix keeps the split
    return reader
