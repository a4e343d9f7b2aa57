"""The dedup stage's global steps after datatrove's signatures: the bucket step split by hash range
(`num_buckets x k` tasks) and the clustering that keeps the first id, in bounded memory.

Memory of the clustering (one task), for n candidate documents (those in any `.dups` file):

- the candidates and their connected components: two numpy arrays, 12 bytes per candidate (a uint64
  (file, doc) key and an int32 component label), plus, while one chunk of a band's pairs is merged,
  that chunk (`cluster_memory_mb` caps it) and scipy's graph of it;
- the decisions: candidates are spilled to `P` partition files by component, P chosen so that one
  partition's rows fit `cluster_memory_mb`, and processed one partition at a time. A document's full
  signature is read from `ids/RANK.sig` when it is decided (by seeking, one file handle per
  signature file in a small cache) and kept only while it is the kept document of a group;
- the removals: appended per input file as they are found and sorted one file at a time at the end.

So the task grows by about 12 bytes per candidate, whatever the corpus (docs/data.md, "At scale").
"""

from __future__ import annotations

import json
import shutil
import struct
from array import array
from collections import OrderedDict
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets
from loguru import logger

from phi1.data.minhash import band_keys
from phi1.utils.io import atomic_write

# bytes one spilled candidate takes in memory once its partition is loaded (a tuple of the component,
# id string, hash string and key); measured at ~170 B with 20-character ids, rounded up
ROW_BYTES = 256
MAX_PARTITIONS = 512  # open partition files at once (the budget is exceeded past 512 x budget of rows)
PAIR_BYTES = 16  # one (file, doc, file, doc) pair of a `.dups` file
SPILL_CHUNK = 4096  # candidates turned into Python objects at once
MIN_CHUNK_PAIRS = 1024  # the smallest chunk of a band's pairs merged into the components at once


class HashRangeBuckets(MinhashDedupBuckets):
    """datatrove's bucket step, whose `k` tasks per band (`tasks = num_buckets x k`) split the band
    by the first hash of its signatures. A MinHash value is a minimum over a document's shingles, so
    the values crowd near 0: even ranges of [0, 2^61 - 1) would give almost every signature to the
    first task. The boundaries are the k-quantiles of a sample of first hashes instead: evenly spaced
    lines of every sorted signature file of the band (`SAMPLE` in all), the same for every task.
    (datatrove samples the first file alone and fails when it has fewer than k lines.) Equal
    signatures share their first hash, so they always fall in one task."""

    name = "minhash buckets (hash ranges)"
    SAMPLE = 1 << 16  # first hashes read per band, over all its signature files

    def get_worker_hash_range(self, sig_files, rank, world_size):
        from datatrove.pipeline.dedup.minhash import _mersenne_prime

        k = world_size // self.config.num_buckets
        worker = rank % k
        top = int(_mersenne_prime) if self.config.hash_config.precision == 64 else int(self.config.hash_config.max)
        if k == 1:
            return 0, top
        fmt = self.config.hash_config.struct_format
        line = struct.calcsize(f"<{self.config.hashes_per_bucket}{fmt}I")
        first = struct.calcsize(f"<{fmt}")
        per_file = max(1, self.SAMPLE // max(1, len(sig_files)))
        sample = []
        for f in sig_files:
            with self.input_folder.open(f, mode="rb") as fh:
                n = fh.size // line
                for j in range(min(n, per_file)):
                    fh.seek(line * (j * n // min(n, per_file)))
                    sample.append(struct.unpack(f"<{fmt}", fh.read(first))[0])
        if len(sample) < k:  # too few signatures to place boundaries: even ranges (Python ints)
            bounds = [top * w // k for w in range(k + 1)]
        else:
            sample.sort()
            bounds = [0, *(sample[len(sample) * w // k] for w in range(1, k)), top]
        return bounds[worker], (top if worker == k - 1 else bounds[worker + 1])


def _node_keys(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (file << 32 | doc) keys of both sides of (file, doc, file, doc) pairs."""
    p = pairs.astype(np.uint64)
    return (p[:, 0] << np.uint64(32)) | p[:, 1], (p[:, 2] << np.uint64(32)) | p[:, 3]


def _pair_chunks(path: Path, chunk_pairs: int):
    with path.open("rb") as fh:
        while True:
            buf = fh.read(chunk_pairs * PAIR_BYTES)
            if not buf:
                return
            usable = len(buf) - len(buf) % PAIR_BYTES
            yield np.frombuffer(buf[:usable], dtype="<u4").reshape(-1, 4)


class _SigReader:
    """Full signatures from `ids/RANK.sig` by (file, doc), with a few file handles open at once."""

    def __init__(self, folder: Path, num_hashes: int, handles: int = 64):
        self.folder, self.size, self.handles = folder, num_hashes * 8, handles
        self._open: OrderedDict[int, object] = OrderedDict()

    def __call__(self, file_i: int, doc: int) -> np.ndarray:
        fh = self._open.pop(file_i, None)
        if fh is None:
            fh = (self.folder / f"{file_i:05d}.sig").open("rb")
            if len(self._open) >= self.handles:
                self._open.popitem(last=False)[1].close()
        self._open[file_i] = fh
        fh.seek(doc * self.size)
        return np.frombuffer(fh.read(self.size), dtype=np.uint64)

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()


def _write_sorted(rows: Path, stem: Path) -> None:
    """One input file's removal rows ([doc, kept id, kind, similarity] lines, in any order) as
    `STEM.remove` and `STEM.dupof.jsonl` sorted by doc, holding 16 bytes per row (doc, offset)."""
    docs, offsets = array("q"), array("q")
    with rows.open("rb") as fh:
        pos = 0
        for line in fh:
            docs.append(int(line[1:line.index(b",")]))
            offsets.append(pos)
            pos += len(line)
    doc_arr, off_arr = np.frombuffer(docs, np.int64), np.frombuffer(offsets, np.int64)
    order = np.lexsort((off_arr, doc_arr))
    with atomic_write(stem.with_name(stem.name + ".remove"), "wb") as fh:
        fh.write(doc_arr[order].astype("<u4").tobytes())
    offs = off_arr[order]
    with rows.open("rb") as src, atomic_write(stem.with_name(stem.name + ".dupof.jsonl"), "wb") as fh:
        for off in offs.tolist():
            src.seek(off)
            fh.write(src.readline())


class KeepFirstIdCluster(PipelineStep):
    """Decides, from the candidate pairs of the bucket step, which documents to drop, with the result
    of a greedy single-machine dedup: documents are taken in id order, and one is dropped when it
    shares a band (all rows of one band equal) with a document already kept and the MinHash estimate
    of their Jaccard similarity reaches the threshold; `duplicate_of` names that kept document (a
    direct match, not a cluster root; of several, the one whose id sorts first). A chain A~B~C with A
    and C unlike each other keeps C. The result depends on ids only, not on how records were spread
    over tasks. Writes `RANK.remove` (datatrove's format: sorted uint32 doc indices) and
    `RANK.dupof.jsonl` (index, the id kept instead, exact or near, similarity).

    Decisions in one connected component of the candidate graph never depend on another, so the
    candidates are spilled by component to partition files and decided one partition at a time
    (the module's docstring gives the memory)."""

    name = "minhash clusters (keep first id)"

    def __init__(self, buckets_folder: str, ids_folder: str, output_folder: str, num_hashes: int,
                 threshold: float, num_buckets: int, memory_mb: int = 1024):
        super().__init__()
        self.buckets_folder, self.ids_folder, self.output_folder = Path(buckets_folder), Path(ids_folder), Path(output_folder)
        self.num_hashes, self.threshold, self.num_buckets = num_hashes, threshold, num_buckets
        self.memory_bytes = max(1, memory_mb) * (1 << 20)

    # ---- 1. candidates and their components (numpy, 12 bytes per candidate) ----------------------

    def _components(self, dups: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique candidate keys, and each one's connected-component label."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        chunk = max(MIN_CHUNK_PAIRS, self.memory_bytes // (8 * PAIR_BYTES))  # pairs per chunk: ~8x their bytes
        keys = np.empty(0, np.uint64)
        for f in dups:
            for pairs in _pair_chunks(f, chunk):
                a, b = _node_keys(pairs)
                keys = np.union1d(keys, np.union1d(a, b))
        n = len(keys)
        labels = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        for f in dups:
            for pairs in _pair_chunks(f, chunk):
                a, b = _node_keys(pairs)
                la, lb = labels[np.searchsorted(keys, a)], labels[np.searchsorted(keys, b)]
                graph = coo_matrix((np.ones(len(la), dtype=np.int8), (la, lb)), shape=(n, n))
                _, comp = connected_components(graph, directed=False)
                labels = comp[labels].astype(labels.dtype, copy=False)
                del graph, comp, la, lb, a, b
        return keys, labels

    # ---- 2. spill candidates by component -------------------------------------------------------

    def _spill(self, keys: np.ndarray, labels: np.ndarray, spill: Path, parts: int) -> None:
        """Each candidate's (component, id, exact hash, key) as a JSON line in partition
        `component % parts`, read from the ids files one line at a time."""
        outs = [(spill / f"{p:05d}.jsonl").open("w") for p in range(parts)]
        try:
            files = (keys >> np.uint64(32)).astype(np.int64)
            bounds = np.flatnonzero(np.diff(files)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(keys)]) if len(keys) else ():
                file_i, lo, hi = int(files[lo]), int(lo), int(hi)
                with (self.ids_folder / f"{file_i:05d}.jsonl").open() as fh:
                    lines = enumerate(fh)
                    for c in range(lo, hi, SPILL_CHUNK):  # Python lists of one chunk at a time
                        ks = keys[c:min(hi, c + SPILL_CHUNK)]
                        docs, labs = (ks & np.uint64(0xFFFFFFFF)).tolist(), labels[c:c + len(ks)].tolist()
                        for doc, lab, key in zip(docs, labs, ks.tolist()):
                            for doc_i, line in lines:
                                if doc_i == doc:
                                    break
                            else:
                                raise RuntimeError(f"{self.ids_folder / f'{file_i:05d}.jsonl'} has fewer documents "
                                                   "than the bucket step paired; rerun the dedup stage")
                            doc_id, h = json.loads(line)
                            outs[lab % parts].write(json.dumps([lab, doc_id, h, key]) + "\n")
        finally:
            for o in outs:
                o.close()

    # ---- 3. decide one partition at a time --------------------------------------------------------

    def _decide(self, rows: list, sig_of: _SigReader) -> tuple[list, int]:
        """Greedy keep-first-id over the rows of whole components; (removals, documents kept)."""
        rows.sort(key=lambda r: (r[0], r[1], r[3]))
        removals, kept_total = [], 0
        start = 0
        while start < len(rows):
            end = start
            while end < len(rows) and rows[end][0] == rows[start][0]:
                end += 1
            kept_by_band: dict[tuple[int, bytes], list[int]] = {}
            kept_hash: dict[str, int] = {}
            kept_sig: dict[int, np.ndarray] = {}
            for i in range(start, end):
                _, doc_id, h, key = rows[i]
                file_i, doc = key >> 32, key & 0xFFFFFFFF
                if h in kept_hash:  # an exact copy has the same signature: that kept document is its only match
                    k = kept_hash[h]
                    removals.append((file_i, doc, rows[k][1], "exact_duplicate", 1.0))
                    self.stat_update("exact_duplicate")
                    continue
                sig = sig_of(file_i, doc)
                bands = band_keys(sig, self.num_buckets)
                best = None
                for k in sorted({k for band in bands for k in kept_by_band.get(band, ())}):
                    sim = float(np.mean(sig == kept_sig[k]))  # MinHash estimate of Jaccard
                    if sim >= self.threshold:
                        best = (k, sim)  # rows are in id order: the first that qualifies sorts first
                        break
                if best is None:
                    for band in bands:
                        kept_by_band.setdefault(band, []).append(i)
                    kept_hash[h], kept_sig[i] = i, sig
                    kept_total += 1
                    continue
                k, sim = best
                removals.append((file_i, doc, rows[k][1], "near_duplicate", round(sim, 3)))
                self.stat_update("near_duplicate")
                self.stat_update("candidates_verified")
            start = end
        return removals, kept_total

    # ---- the step -----------------------------------------------------------------------------------

    def run(self, data, rank: int = 0, world_size: int = 1):
        out = self.output_folder
        out.mkdir(parents=True, exist_ok=True)
        spill, rows_dir = out / ".spill", out / ".rows"
        for d in (spill, rows_dir):  # a killed run's partial files (this folder is this step's own)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        for f in [*out.glob("*.remove"), *out.glob("*.dupof.jsonl"), out / "done.json"]:
            f.unlink(missing_ok=True)
        with self.track_time():
            keys, labels = self._components(sorted(self.buckets_folder.glob("*.dups")))
            parts = int(min(MAX_PARTITIONS, max(1, -(-len(keys) * ROW_BYTES // self.memory_bytes))))
            self.stat_update("candidates", value=len(keys))
            self.stat_update("partitions", value=parts)
            logger.info(f"{len(keys)} candidates in {len(np.unique(labels)) if len(keys) else 0} components; "
                        f"{parts} partition(s) of at most {self.memory_bytes >> 20} MiB")
            self._spill(keys, labels, spill, parts)
            del keys, labels
            sig_of = _SigReader(self.ids_folder, self.num_hashes)
            clusters = 0
            try:
                for p in range(parts):
                    part = spill / f"{p:05d}.jsonl"
                    with part.open() as fh:
                        rows = [tuple(json.loads(line)) for line in fh]
                    part.unlink()
                    removals, kept = self._decide(rows, sig_of)
                    clusters += kept
                    del rows
                    by_file: dict[int, list] = {}
                    for file_i, *row in removals:
                        by_file.setdefault(file_i, []).append(row)
                    for file_i, file_rows in by_file.items():
                        with (rows_dir / f"{file_i:06d}.jsonl").open("a") as fh:
                            fh.write("".join(json.dumps(row) + "\n" for row in file_rows))
                    logger.info(f"partition {p + 1}/{parts}: {len(removals)} to remove")
            finally:
                sig_of.close()
            for f in sorted(rows_dir.glob("*.jsonl")):
                _write_sorted(f, out / f.name.removesuffix(".jsonl"))
            shutil.rmtree(spill, ignore_errors=True)
            shutil.rmtree(rows_dir, ignore_errors=True)
            self.stat_update("kept_with_candidates", value=clusters)
            (out / "done.json").write_text(json.dumps({"clusters": clusters, "partitions": parts}))
