"""The `exact-dedup` stage: drop every record whose normalised text another record already has, by
a 64-bit content hash; of each group of copies the record whose id sorts first is kept, whatever
the task count. Code corpora remove exact copies first (cheap) and only then run MinHash (`dedup`).

Three blocks, each scaling out:

- `hashes` (tasks): each task hashes its records and writes, for each of `ranges` hash ranges, its
  (hash, index) pairs sorted by hash (`work/hashes/rRANGE/TASK.bin`, 12 bytes a record) and their
  ids in the same order (`TASK.ids`, one JSON string a line);
- `groups` (`ranges` tasks): each range task loads its range from every task (12 bytes a record in
  numpy), finds the hashes held more than once, reads only those records' ids, and names the first
  id of each group; the others go to `work/remove/TASK/rRANGE.jsonl` as [index, kept id];
- `filter` (tasks): each task reads its input again and drops the listed records.

A 64-bit hash: among 24M distinct documents the chance that any two collide is about 1.6e-5.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from phi1.data.engine import Block, RecordReader, first_pass
from phi1.data.minhash import normalized_hash
from phi1.data.minhash_steps import DuplicateFilter
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, commit_block, config_of, run_stage_file
from phi1.errors import ConfigError
from phi1.utils.io import temp_beside

NORMALIZE = ("lines", "words", "none")
PAIR = np.dtype([("hash", "<u8"), ("index", "<u4")])
_SPACE = re.compile(r"\s+")


@dataclass
class ExactDedupStage:
    """The exact-dedup stage's settings."""

    normalize: str = "lines"  # lines: line endings, trailing spaces and blank lines ignored (as dedup's exact test) | words: also case and all whitespace runs (web text) | none: the bytes
    ranges: int | None = None  # hash-range tasks of the groups block (none: the stage's tasks)

    def validate(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ConfigError(f"exact-dedup.normalize: {self.normalize!r} must be one of {', '.join(NORMALIZE)}")
        v = self.ranges
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096):
            raise ConfigError(f"exact-dedup.ranges: {v!r} must be a whole number from 1 to 4096")


def content_hash(text: str, normalize: str = "lines") -> int:
    """The 64-bit hash exact-dedup compares (`normalize` as `ExactDedupStage.normalize`)."""
    if normalize == "lines":
        return int(normalized_hash(text), 16)
    if normalize == "words":
        text = _SPACE.sub(" ", text).strip().lower()
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _range_of(hashes: np.ndarray, ranges: int) -> np.ndarray:
    """The hash range of each hash: floor(hash * ranges / 2^64), exactly, in uint64."""
    return ((hashes >> np.uint64(32)) * np.uint64(ranges)) >> np.uint64(32)


def _replace(path: Path, data: bytes) -> None:
    """Write a work file whole (a killed task's rerun writes it again; its completion marker, not an
    fsync, says the block is done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ExactHashes(PipelineStep):
    """Block 1: each record's content hash, sorted and split by hash range (see the module)."""

    name = "exact hashes"

    def __init__(self, folder: Path, ranges: int, normalize: str):
        super().__init__()
        self.folder, self.ranges, self.normalize = Path(folder), ranges, normalize

    def run(self, data, rank: int = 0, world_size: int = 1):
        hashes, ids = [], []
        with self.track_time():
            for doc in data:
                hashes.append(content_hash(doc.text, self.normalize))
                ids.append(doc.id)
            pairs = np.empty(len(hashes), PAIR)
            pairs["hash"], pairs["index"] = np.asarray(hashes, np.uint64), np.arange(len(hashes), dtype=np.uint32)
            del hashes
            pairs.sort(order=("hash", "index"))
            where = _range_of(pairs["hash"], self.ranges)
            bounds = np.searchsorted(where, np.arange(self.ranges + 1, dtype=np.uint64))
            for r in range(self.ranges):
                part = pairs[bounds[r]:bounds[r + 1]]
                _replace(self.folder / f"r{r:05d}" / f"{rank:05d}.bin", part.tobytes())
                _replace(self.folder / f"r{r:05d}" / f"{rank:05d}.ids",
                         "".join(json.dumps(ids[i]) + "\n" for i in part["index"].tolist()).encode())
            self.stat_update("hashed", value=len(pairs))
        return
        yield  # a generator that yields nothing: the records of this block end here


class ExactGroups(PipelineStep):
    """Block 2, one task per hash range: the first id of every group of equal hashes (see the module)."""

    name = "exact groups"

    def __init__(self, hashes: Path, remove: Path):
        super().__init__()
        self.hashes, self.remove = Path(hashes), Path(remove)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        with self.track_time():
            files = sorted((self.hashes / f"r{rank:05d}").glob("*.bin"))
            parts = [np.fromfile(f, PAIR) for f in files]
            if not parts:
                return
            h = np.concatenate([p["hash"] for p in parts])
            index = np.concatenate([p["index"] for p in parts])
            src = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p) for p in parts])
            pos = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
            del parts
            order = np.argsort(h, kind="stable")
            hs = h[order]
            same = hs[1:] == hs[:-1]
            dup = np.zeros(len(hs), bool)
            dup[1:] |= same
            dup[:-1] |= same
            members = order[dup]  # the records whose hash another record has, grouped by hash
            self.stat_update("records", value=len(h))
            ids = self._ids(files, src[members], pos[members])
            task = np.asarray([int(f.stem) for f in files], np.int64)[src[members]].tolist()
            idx = index[members].tolist()
            mh = h[members]
            starts = np.flatnonzero(np.r_[True, mh[1:] != mh[:-1]]).tolist() if len(members) else []
            rows: dict[int, list] = {}
            for start, end in zip(starts, [*starts[1:], len(members)]):
                group = sorted(range(start, end), key=lambda m: (ids[m], task[m], idx[m]))
                kept = ids[group[0]]
                for m in group[1:]:
                    rows.setdefault(task[m], []).append([idx[m], kept])
                self.stat_update("groups")
                self.stat_update("copies", value=end - start - 1)
            for t, file_rows in rows.items():
                _replace(self.remove / f"{t:05d}" / f"r{rank:05d}.jsonl",
                         "".join(json.dumps(row) + "\n" for row in file_rows).encode())

    @staticmethod
    def _ids(files: list[Path], src: np.ndarray, pos: np.ndarray) -> list:
        """The ids at (file, position) pairs, reading each ids file once, only as far as needed."""
        out: list = [None] * len(src)
        for f_i in np.unique(src).tolist():
            want = np.flatnonzero(src == f_i)
            want = want[np.argsort(pos[want], kind="stable")]
            targets = pos[want].tolist()
            j = 0
            with files[f_i].with_suffix(".ids").open() as fh:
                for line_no, line in enumerate(fh):
                    while j < len(targets) and targets[j] == line_no:
                        out[int(want[j])] = json.loads(line)
                        j += 1
                    if j == len(targets):
                        break
        return out


class ExactFilter(DuplicateFilter):
    """Block 3: drops the records the groups block listed for this task, naming the kept one."""

    name = "drop exact copies"

    def marks(self, rank: int):
        """The groups block's rows for this task (one file per hash range), sorted by index."""
        rows = []
        for f in sorted((self.remove_folder / f"{rank:05d}").glob("*.jsonl")):
            with f.open() as fh:
                rows += [json.loads(line) for line in fh]
        rows.sort()
        return contextlib.nullcontext(iter([[i, kept, "exact_duplicate", 1.0] for i, kept in rows]))


def build_exact_dedup(ctx: StageContext, cfg: ExactDedupStage) -> list[Block]:
    ranges = cfg.ranges or ctx.tasks
    hashes, remove = ctx.work / "hashes", ctx.work / "remove"
    return [
        Block("hashes", [first_pass(RecordReader(ctx.input, ctx.skip_bad_lines)),
                         ExactHashes(hashes, ranges, cfg.normalize)], tasks=ctx.tasks),
        Block("groups", [ExactGroups(hashes, remove)], tasks=ranges),
        Block("filter", [ctx.reader(), ExactFilter(remove, ctx.rejected_writer("exact-dedup")), ctx.writer()],
              tasks=ctx.tasks),
        commit_block(ctx),
    ]


def run_exact_dedup(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                    cfg: ExactDedupStage | None = None, workers: int = 0, skip_bad_lines: bool = False,
                    rejected: str | None = None, quiet: bool = False, overwrite: bool = False,
                    **options) -> StageReport:
    """Drop exact copies (after `normalize`); each dropped record names the one kept (`meta.duplicate_of`).
    `options` are `ExactDedupStage` fields (None keeps the default)."""
    cfg = config_of(KIND, cfg, options)
    examples: list[dict] = []

    def note(rec: dict) -> None:
        if len(examples) < 50:
            examples.append({"id": rec["id"], "duplicate_of": rec["meta"].get("duplicate_of")})

    report, _ = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers, on_reject=note)
    report.details.update(normalize=cfg.normalize, examples=examples)
    return finish_report(report, quiet)


KIND = StageKind(
    "exact-dedup", ExactDedupStage, build_exact_dedup, run_exact_dedup,
    help="drop exact copies by a hash of the normalised text (cheap; run before dedup)",
    demo=DemoPlace("collect", "drop exact copies (content hash)"))
