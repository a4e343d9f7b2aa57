"""phi1's data stages as datatrove pipeline steps, and the blocks each stage runs.

Every stage kind has one config dataclass (the only place its defaults live) and one builder that
turns it into blocks (see `phi1.data.engine`). The phi-specific logic is ours and lives in the
modules it always lived in (`collect.text_skip_reason`, `edu_rules`, `classify`, `decontam`, `mine`);
readers, writers, MinHash signatures and buckets, and the executors are datatrove's.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.batching import batched
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from phi1.data.engine import Block, RecordReader, RecordWriter, block_counts, shard_records
from phi1.errors import ConfigError


# ---- stage context --------------------------------------------------------------------------------

@dataclass
class StageContext:
    """Where a stage reads and writes, and how many tasks its parallel blocks use."""

    name: str
    dir: Path
    input: Path | None
    tasks: int
    skip_bad_lines: bool = False
    write_rejected: bool = True
    fingerprint: str = ""
    kind: str = ""

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    def reader(self, source: Path | None = None) -> RecordReader:
        return RecordReader(source or self.input, skip_bad_lines=self.skip_bad_lines, bad_lines_dir=self.bad_lines)

    @property
    def bad_lines(self) -> Path:
        """Where the readers of the stage's input list the lines they skipped (see `Commit`)."""
        return self.work / "bad_lines"

    def writer(self, folder: Path | None = None) -> RecordWriter:
        w = RecordWriter(folder or self.data)
        if folder is None:
            renamed(w, OUTPUT_WRITER)  # its stats (records, doc_len) are the stage's output in the manifest
        return w

    def rejected_writer(self, tag: str = "") -> RecordWriter | None:
        """Dropped records, `rejected/[TAG-]RANK.jsonl.gz` (a tag per block when several blocks drop)."""
        if not self.write_rejected:
            return None
        return renamed(RecordWriter(self.dir / "rejected", prefix=tag), "phi1 rejected writer")


OUTPUT_WRITER = "phi1 stage output"
FIRST_PASS = "(first pass)"


def first_pass(reader: RecordReader) -> RecordReader:
    """A reader of a block that reads the stage's input before the block that keeps or drops: the
    lines it skips are counted and listed once, by the later reader, in the manifest."""
    reader.bad_lines_dir = None
    return renamed(reader, f"{reader.name} {FIRST_PASS}")


def renamed(step, name: str):
    """`step` under another name in its stats (datatrove names a step's stats when it is built)."""
    from datatrove.utils.stats import Stats

    step.name = name
    step.stats = Stats(str(step))
    return step


class Commit(PipelineStep):
    """The last block of every stage (one task): counts the shards and writes `manifest.json`."""

    name = "commit"

    def __init__(self, ctx: StageContext, extra: dict | None = None):
        super().__init__()
        self.ctx, self.extra = ctx, dict(extra or {})

    def run(self, data, rank: int = 0, world_size: int = 1):
        from phi1.utils.io import atomic_write_json

        ctx = self.ctx
        shards = []
        for sub in ("data", "rejected"):
            for f in sorted((ctx.dir / sub).glob("*.jsonl*")):
                shards.append({"path": f"{sub}/{f.name}", "records": shard_records(f), "bytes": f.stat().st_size})
        counts: dict[str, int] = {}
        for block_dir in sorted((ctx.dir / "logs").glob("*")):
            for k, v in block_counts(block_dir).items():
                counts[f"{block_dir.name}/{k}"] = v
        data_shards = [s for s in shards if s["path"].startswith("data/")]
        reasons: dict[str, int] = {}
        for key, n in counts.items():
            tail = key.rsplit("/", 1)[-1]
            if tail.startswith("dropped_"):
                reasons[tail[len("dropped_"):]] = reasons.get(tail[len("dropped_"):], 0) + n
            elif tail in ("bad_utf8", "bad_json", "no_text") and not key.split("/")[-2].endswith(FIRST_PASS):
                reasons[tail] = reasons.get(tail, 0) + n
        text_chars = sum(n for key, n in counts.items() if key.endswith(f"{OUTPUT_WRITER}/doc_len"))
        bad_lines: list = []
        for f in sorted(ctx.bad_lines.glob("*.jsonl")):
            bad_lines += [json.loads(line) for line in f.read_text().splitlines()]
        extra = {}
        for name in self.extra.get("files", []):
            p = ctx.dir / name
            if p.exists():
                extra[name] = json.loads(p.read_text()) if p.suffix == ".json" else str(p)
        atomic_write_json(ctx.dir / "manifest.json", {
            "stage": ctx.name, "kind": ctx.kind, "fingerprint": ctx.fingerprint, "tasks": ctx.tasks,
            "kept": sum(s["records"] for s in data_shards), "text_chars": text_chars,
            "rejected": sum(s["records"] for s in shards if s["path"].startswith("rejected/")),
            "dropped": dict(sorted(reasons.items())), "shards": data_shards,
            "rejected_shards": [s for s in shards if s["path"].startswith("rejected/")],
            "bad_lines": sorted(bad_lines, key=lambda b: (b["file"], b["line"]))[:RecordReader.BAD_LINES_LISTED], "counts": counts, **extra})


def commit_block(ctx: StageContext, **extra) -> Block:
    return Block("commit", [Commit(ctx, extra)], tasks=1)


def _one_block(ctx: StageContext, steps: list, name: str = "main") -> list[Block]:
    return [Block(name, [ctx.reader(), *steps, ctx.writer()], tasks=ctx.tasks), commit_block(ctx)]


# ---- dedup: datatrove's MinHash stages with code-token shingles -----------------------------------

def normalized_hash(text: str) -> str:
    """Hash of the text with line endings, trailing spaces/tabs and blank lines normalised.

    Line-wise `rstrip(" \\t")` gives the same result as the `[ \\t]+$` regex at ~3x its speed."""
    lines = [ln.rstrip(" \t") for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    norm = "\n".join(ln for ln in lines if ln.strip()).strip()
    return hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def bands_for(threshold: float, max_hashes: int = 128, tolerance: float = 0.01) -> tuple[int, int]:
    """The (bands b, rows r) for a Jaccard threshold: of the pairs with b*r <= max_hashes whose LSH 50%
    point (1/b)^(1/r) is within `tolerance` of `threshold`, the one with the most hashes (the best
    estimate when candidates are verified); if none is that near, the nearest."""
    pairs = [(b, r) for r in range(1, max_hashes + 1) for b in range(1, max_hashes // r + 1)]
    gap = {p: abs((1 / p[0]) ** (1 / p[1]) - threshold) for p in pairs}
    near = [p for p in pairs if gap[p] <= tolerance]
    if near:
        return min(near, key=lambda p: (-p[0] * p[1], gap[p]))
    return min(pairs, key=lambda p: (gap[p], -p[0] * p[1]))


@dataclass
class DedupStage:
    """Near (and exact) duplicates by MinHash LSH. `num_buckets` bands of `hashes_per_bucket` rows: two
    documents become candidates when all rows of one band agree, which happens with probability
    1 - (1 - J^r)^b for Jaccard J; the 50% point is about (1/b)^(1/r) = 0.855 for b=9, r=14.
    `threshold`, when given, picks the bands instead (`bands_for`: of the pairs with at most 128
    hashes whose 50% point is within 0.01 of it, the one with the most hashes). Candidates are then
    verified: dropped only when the fraction of all b*r hashes that agree reaches the threshold. Shingles are `shingle` consecutive code tokens (identifiers,
    numbers, punctuation; layout ignored), so exact and whitespace-only copies always collide. Of each
    cluster the record whose id sorts first is kept, whatever the task count."""

    num_buckets: int = 9  # LSH bands b (ignored when threshold is given)
    hashes_per_bucket: int = 14  # rows r per band (ignored when threshold is given)
    shingle: int = 5  # code tokens per shingle
    seed: int = 1  # the MinHash functions' seed
    threshold: float | None = None  # Jaccard threshold for near duplicates (none: the bands' 50% point, about 0.855)
    max_hashes: int = 128  # with `threshold`: at most this many hashes per document (bands x rows)

    def validate(self) -> None:
        if isinstance(self.max_hashes, bool) or not isinstance(self.max_hashes, int) or not 1 <= self.max_hashes <= 1024:
            raise ConfigError(f"dedup.max_hashes: {self.max_hashes!r} must be a whole number from 1 to 1024")
        if self.threshold is not None:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
                raise ConfigError(f"dedup.threshold: {t!r} must be a number between 0 and 1 (e.g. 0.8)")
            self.num_buckets, self.hashes_per_bucket = bands_for(float(t), self.max_hashes)
        for k in ("num_buckets", "hashes_per_bucket", "shingle"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"dedup.{k}: {v!r} must be a whole number >= 1")

    @property
    def verify_threshold(self) -> float:
        """Candidates are dropped only when their MinHash estimate of Jaccard (the fraction of all
        b*r hashes that agree) reaches this: `threshold`, or the bands' 50% point."""
        return float(self.threshold) if self.threshold is not None else self.band_threshold

    @property
    def band_threshold(self) -> float:
        return round((1 / self.num_buckets) ** (1 / self.hashes_per_bucket), 3)

    def minhash(self) -> MinhashConfig:
        return MinhashConfig(n_grams=self.shingle, num_buckets=self.num_buckets,
                             hashes_per_bucket=self.hashes_per_bucket, seed=self.seed,
                             hash_config=HashConfig(precision=64))


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signatures over code-token shingles (its word tokenizer needs spaCy and is
    ~10x slower); also writes each document's id and exact hash to `ids/RANK.jsonl` for the clustering."""

    name = "minhash signatures (code tokens)"

    def __init__(self, output_folder: str | None, config: MinhashConfig, ids_folder: str | None):
        # Not MinhashDedupSignature.__init__: it loads a spaCy word tokenizer these shingles do not use.
        # Without folders it only computes signatures (`text_signature`, as `MinhashIndex` does).
        from datatrove.io import get_datafolder
        from datatrove.utils.hashing import create_hash_func

        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(output_folder) if output_folder else None
        self.config = config
        self.num_hashes = config.num_buckets * config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(config.hash_config)
        self.skip_existing_sigs = False
        self.ids_folder = Path(ids_folder) if ids_folder else None

    def get_shingles(self, text: str) -> np.ndarray:
        from phi1.data.tokens import code_tokens, shingle_hashes, token_hashes

        return shingle_hashes(token_hashes(code_tokens(text)), self.config.n_grams).astype(np.uint64).reshape(-1, 1)

    SHINGLE_CHUNK = 4096  # datatrove hashes all shingles x b*r at once: ~2 KB per shingle of a big file

    def flat_signature(self, shingles: np.ndarray) -> np.ndarray:
        """datatrove's signature (all b*r hashes, band after band), taken over chunks of shingles (the
        minimum of the chunks' minima is the same), so a 1 MB file costs a few MB, not hundreds."""
        low = None
        for i in range(0, max(len(shingles), 1), self.SHINGLE_CHUNK):
            part = np.asarray(super().get_signature(shingles[i:i + self.SHINGLE_CHUNK]), dtype=np.uint64).reshape(-1)
            low = part if low is None else np.minimum(low, part)
        return low

    def text_signature(self, text: str) -> np.ndarray | None:
        """The signature of one text (None when it has no shingle)."""
        shingles = self.get_shingles(text)
        return self.flat_signature(shingles) if shingles.size else None

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        sig = self.flat_signature(shingles)
        self._full.seek(self._doc_idx * self.num_hashes * 8)  # documents without shingles leave zeros
        self._full.write(sig.tobytes())
        return sig.reshape(self.config.num_buckets, -1).tolist()

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.ids_folder.mkdir(parents=True, exist_ok=True)
        tmp = self.ids_folder / f".{rank:05d}.jsonl.tmp"
        tmp_sig = self.ids_folder / f".{rank:05d}.sig.tmp"
        with tmp.open("w") as ids, tmp_sig.open("wb") as self._full:
            def tee():
                for i, doc in enumerate(data):
                    self._doc_idx = i
                    ids.write(json.dumps([doc.id, normalized_hash(doc.text)]) + "\n")
                    yield doc

            super().run(tee(), rank, world_size)  # not a generator: it writes the signature files
        os.replace(tmp_sig, self.ids_folder / f"{rank:05d}.sig")  # every hash of every document, for verifying
        os.replace(tmp, self.ids_folder / f"{rank:05d}.jsonl")


class KeepFirstIdCluster(PipelineStep):
    """Decides, from the candidate pairs of datatrove's bucket step, which documents to drop, keeping
    the behaviour of a greedy single-machine dedup: documents are taken in id order, and one is dropped
    when it is a candidate of a document already kept (`duplicate_of` names that document, a direct
    match, not a cluster root). Candidates are the documents that share one band's hashes: datatrove
    writes each band's matches as chains in its own `.dups` file, so the groups of a file are cliques.
    Unlike clustering whole connected components, a chain A~B~C with A and C unlike each other keeps
    C. The result depends on ids only, not on how records were spread over tasks. Writes `RANK.remove`
    (datatrove's format: sorted uint32 doc indices) and `RANK.dupof.jsonl` (index, the id kept
    instead, exact or near). Memory grows with the number of candidate pairs only."""

    name = "minhash clusters (keep first id)"

    def __init__(self, buckets_folder: str, ids_folder: str, output_folder: str, num_hashes: int,
                 threshold: float):
        super().__init__()
        self.buckets_folder, self.ids_folder, self.output_folder = Path(buckets_folder), Path(ids_folder), Path(output_folder)
        self.num_hashes, self.threshold = num_hashes, threshold

    def _signatures(self, nodes_by_file: dict[int, set[int]]) -> dict[tuple[int, int], np.ndarray]:
        size = self.num_hashes * 8
        out = {}
        for file_i, docs in nodes_by_file.items():
            with (self.ids_folder / f"{file_i:05d}.sig").open("rb") as fh:
                for d in sorted(docs):
                    fh.seek(d * size)
                    out[(file_i, d)] = np.frombuffer(fh.read(size), dtype=np.uint64)
        return out

    @staticmethod
    def _band_groups(path: Path) -> list[list[tuple[int, int]]]:
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(x):
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(x, x) != root:
                parent[x], x = root, parent[x]
            return root

        with path.open("rb") as fh:
            for f1, d1, f2, d2 in read_tuples_from_file(fh, "4I", lines_to_buffer=1000):
                a, b = find((f1, d1)), find((f2, d2))
                parent.setdefault(a, a)
                parent.setdefault(b, b)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for node in parent:
            groups.setdefault(find(node), []).append(node)
        return list(groups.values())

    def run(self, data, rank: int = 0, world_size: int = 1):
        groups_of: dict[tuple[int, int], list[int]] = {}
        n_groups = 0
        for f in sorted(self.buckets_folder.glob("*.dups")):
            for members in self._band_groups(f):
                for node in members:
                    groups_of.setdefault(node, []).append(n_groups)
                n_groups += 1
        nodes_by_file: dict[int, set[int]] = {}
        for node in groups_of:
            nodes_by_file.setdefault(node[0], set()).add(node[1])
        info: dict[tuple[int, int], tuple[str, str]] = {}
        for file_i, docs in nodes_by_file.items():
            with (self.ids_folder / f"{file_i:05d}.jsonl").open() as fh:
                for doc_i, line in enumerate(fh):
                    if doc_i in docs:
                        doc_id, h = json.loads(line)
                        info[(file_i, doc_i)] = (doc_id, h)
        sigs = self._signatures(nodes_by_file)
        kept_in: dict[int, list[tuple[int, int]]] = {}  # group -> the documents kept in it so far
        removals: dict[int, list[tuple[int, str, str, float]]] = {}
        for node in sorted(groups_of, key=lambda n: (info[n][0], n)):
            best = None
            for k in {k for g in groups_of[node] for k in kept_in.get(g, ())}:
                exact = info[node][1] == info[k][1]
                sim = 1.0 if exact else float(np.mean(sigs[node] == sigs[k]))  # MinHash estimate of Jaccard
                if sim >= self.threshold and (best is None or (info[k][0], k) < (info[best[0]][0], best[0])):
                    best = (k, sim, exact)
            if best is None:
                for g in groups_of[node]:
                    kept_in.setdefault(g, []).append(node)
                continue
            k, sim, exact = best
            kind = "exact_duplicate" if exact else "near_duplicate"
            removals.setdefault(node[0], []).append((node[1], info[k][0], kind, round(sim, 3)))
            self.stat_update(kind)
            if not exact:
                self.stat_update("candidates_verified")
        clusters = len({k for ks in kept_in.values() for k in ks})
        self.stat_update("kept_with_candidates", value=clusters)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for file_i, rows in removals.items():
            rows.sort()
            with (self.output_folder / f"{file_i:06d}.remove").open("wb") as fh:
                fh.write(b"".join(struct.pack("<I", row[0]) for row in rows))
            with (self.output_folder / f"{file_i:06d}.dupof.jsonl").open("w") as fh:
                for row in rows:
                    fh.write(json.dumps(list(row)) + "\n")
        (self.output_folder / "done.json").write_text(json.dumps({"clusters": clusters}))


class DuplicateFilter(PipelineStep):
    """Drops the documents the clustering marked, naming the record kept instead (meta.duplicate_of)."""

    name = "drop duplicates"

    def __init__(self, remove_folder: str, exclusion_writer=None):
        super().__init__()
        self.remove_folder, self.exclusion_writer = Path(remove_folder), exclusion_writer

    def run(self, data, rank: int = 0, world_size: int = 1):
        marks: dict[int, tuple[str, str]] = {}
        f = self.remove_folder / f"{rank:06d}.dupof.jsonl"
        if f.exists():
            with f.open() as fh:
                for line in fh:
                    d, kept, kind, sim = json.loads(line)
                    marks[d] = (kept, kind, sim)
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for idx, doc in enumerate(data):
                self.stat_update("total")
                if idx in marks:
                    kept, kind, sim = marks[idx]
                    self.stat_update(f"dropped_{kind}")
                    if writer:
                        doc.metadata.update(filter_reason=kind, duplicate_of=kept)
                        if kind == "near_duplicate":
                            doc.metadata["similarity"] = sim
                        writer.write(doc, rank)
                    continue
                self.stat_update("forwarded")
                yield doc


class MinhashIndex:
    """The dedup stage's decisions for records held in memory (generated data being validated): the
    same code-token signatures, bands and verification, and the first record added is kept. `add_text`
    returns (reason, duplicate_of, similarity) for a duplicate, else None after remembering the text."""

    def __init__(self, threshold: float | None = None, shingle: int | None = None, seed: int | None = None):
        from phi1.data.dedup import DEDUP_THRESHOLD

        opts = {k: v for k, v in (('shingle', shingle), ('seed', seed)) if v is not None}
        self.cfg = DedupStage(threshold=DEDUP_THRESHOLD if threshold is None else threshold, **opts)
        self.cfg.validate()
        self.maker = CodeMinhashSignature(None, self.cfg.minhash(), None)
        self._exact: dict[str, str] = {}
        self._bands: dict[tuple[int, bytes], list[str]] = {}
        self._sigs: dict[str, np.ndarray] = {}

    def add_text(self, key: str, text: str) -> tuple[str, str, float] | None:
        h = normalized_hash(text)
        if h in self._exact:
            return "exact_duplicate", self._exact[h], 1.0
        self._exact[h] = key
        sig = self.maker.text_signature(text)
        if sig is None:
            return None
        r = self.cfg.hashes_per_bucket
        bands = [(b, sig[b * r:(b + 1) * r].tobytes()) for b in range(self.cfg.num_buckets)]
        best = None
        for cand in sorted({c for band in bands for c in self._bands.get(band, ())}):
            sim = float(np.mean(self._sigs[cand] == sig))
            if sim >= self.cfg.verify_threshold and (best is None or sim > best[1]):
                best = (cand, sim)
        if best is not None:
            return "near_duplicate", best[0], round(best[1], 3)
        if key in self._sigs:  # ids should be unique; keep the index consistent when they are not
            key = f"{key}#{len(self._sigs)}"
        for band in bands:
            self._bands.setdefault(band, []).append(key)
        self._sigs[key] = sig
        return None


def dedup_blocks(source: Path, work: Path, out, rejected, tasks: int, cfg: DedupStage,
                 skip_bad_lines: bool = False, bad_lines: Path | None = None) -> list[Block]:
    """The four MinHash blocks: signatures (tasks), buckets (one task per band), clusters (one task),
    filter (tasks). `rejected` is a writer for the dropped records, or None."""
    mh = cfg.minhash()
    sigs, ids, buckets, remove = (str(work / n) for n in ("signatures", "ids", "buckets", "remove"))
    return [
        Block("signatures", [first_pass(RecordReader(source, skip_bad_lines)), CodeMinhashSignature(sigs, mh, ids)], tasks=tasks),
        Block("buckets", [MinhashDedupBuckets(sigs, buckets, config=mh)], tasks=mh.num_buckets),
        Block("clusters", [KeepFirstIdCluster(buckets, ids, remove, mh.num_buckets * mh.hashes_per_bucket,
                                              cfg.verify_threshold)], tasks=1),
        Block("filter", [RecordReader(source, skip_bad_lines, bad_lines), DuplicateFilter(remove, rejected),
                                 out if isinstance(out, RecordWriter) else RecordWriter(out)],
              tasks=tasks),
    ]


def build_dedup(ctx: StageContext, cfg: DedupStage) -> list[Block]:
    return [*dedup_blocks(ctx.input, ctx.work, ctx.writer(), ctx.rejected_writer("dedup"), ctx.tasks, cfg,
                          ctx.skip_bad_lines, ctx.bad_lines), commit_block(ctx)]


# ---- annotate: a fixed-seed sample, then labels ---------------------------------------------------

def sample_key(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


class SampleCandidates(PipelineStep):
    """Keeps this task's `k` records with the smallest keys hash(seed, id) (a streaming bottom-k
    reservoir: one heap of k, any input size). The global k smallest are among the union of every
    task's k smallest, so the sample is the same whatever the task count."""

    name = "sample (bottom-k)"

    def __init__(self, k: int, seed: int, writer):
        super().__init__()
        self.k, self.seed, self.writer = k, seed, writer

    def run(self, data, rank: int = 0, world_size: int = 1):
        heap: list[tuple[int, str, Document]] = []
        for doc in data:
            self.stat_update("seen")
            key = sample_key(self.seed, doc.id)
            item = (-key, doc.id, doc)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        with self.writer as w:
            for neg, _, doc in sorted(heap, reverse=True):
                doc.metadata["sample_key"] = -neg
                w.write(doc, rank)
        if False:  # a generator step with no output
            yield


class SmallestKeys(PipelineStep):
    """One task: the k records with the smallest `meta.sample_key`, in key order."""

    name = "sample (merge)"

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def run(self, data, rank: int = 0, world_size: int = 1):
        best = heapq.nsmallest(self.k, data, key=lambda d: (d.metadata["sample_key"], d.id))
        for doc in best:
            doc.metadata.pop("sample_key", None)
            yield doc


JUDGE_COUNTS = ("cache_hits", "judge_failed", "judge_unparsable", "judge_retried", "schema_refused")  # EduLabels'


class EduLabels(PipelineStep):
    """Educational-value labels 0-5: the LLM judge through an OpenAI-compatible endpoint (cached by
    prompt version + model + text, so a rerun never pays twice), or the transparent rules offline."""

    name = "edu labels"

    def __init__(self, cfg: AnnotateStage, cache: str, batch: int = 256):
        super().__init__()
        self.cfg, self.cache, self.batch = cfg, cache, batch

    def _label(self, texts: list[str]) -> list[dict]:
        from phi1.data.annotate import _llm_labels, _rule_label
        from phi1.data.records import StageReport

        if not self.cfg.endpoint:
            return [_rule_label(t) for t in texts]
        rep = StageReport("annotate")
        labels = _llm_labels(texts, self.cfg, Path(self.cache), rep, True)
        for key in JUDGE_COUNTS:
            self.stat_update(key, value=int(rep.details.get(key, 0)))
        for key, v in rep.details.get("client", {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                self.stat_update(f"client_{key}", value=v)
        return labels

    def run(self, data, rank: int = 0, world_size: int = 1):
        annotator = f"llm:{self.cfg.model}" if self.cfg.endpoint else "rules"
        for batch in batched(data, self.batch):
            for doc, lab in zip(batch, self._label([d.text for d in batch])):
                if "score" in lab:
                    doc.metadata.update(edu_label=lab["score"], edu_reason=lab["reason"], edu_annotator=annotator)
                    if "features" in lab:
                        doc.metadata["edu_features"] = lab["features"]
                    self.stat_update(f"label_{int(lab['score'])}")
                else:
                    doc.metadata.update(edu_error=lab["error"], edu_annotator=annotator)
                    self.stat_update("label_error")
            yield from batch


class JoinLabels(PipelineStep):
    """Every record, with the labels of the sampled ones (read from the label block's shard, by id)."""

    name = "join labels"

    def __init__(self, labelled: Path):
        super().__init__()
        self.labelled = Path(labelled)

    def run(self, data, rank: int = 0, world_size: int = 1):
        labels: dict[str, dict] = {}
        for doc in RecordReader(self.labelled).run(None, 0, 1):
            labels[doc.id] = {k: v for k, v in doc.metadata.items() if k.startswith("edu_")}
        for doc in data:
            lab = labels.get(doc.id)
            if lab is not None:
                doc.metadata.update(lab)
                self.stat_update("labelled")
            yield doc


def build_annotate(ctx: StageContext, cfg: AnnotateStage) -> list[Block]:
    labels = EduLabels(cfg, cache=cfg.cache or str(ctx.dir / "judge-cache.jsonl"))
    if not cfg.sample:
        return _one_block(ctx, [labels], "label")
    cand, labelled = ctx.work / "sample", ctx.work / "labelled"
    sample = Block("sample", [first_pass(ctx.reader()) if not cfg.only_sampled else ctx.reader(),
                              SampleCandidates(cfg.sample, cfg.seed, RecordWriter(cand))], tasks=ctx.tasks)
    if cfg.only_sampled:
        return [sample, Block("label", [RecordReader(cand), SmallestKeys(cfg.sample), labels, ctx.writer()], tasks=1),
                commit_block(ctx)]
    return [sample, Block("label", [RecordReader(cand), SmallestKeys(cfg.sample), labels, RecordWriter(labelled)],
                          tasks=1),
            Block("join", [ctx.reader(), JoinLabels(labelled), ctx.writer()], tasks=ctx.tasks), commit_block(ctx)]


# ---- classify: train on the sample (one task), score in parallel ----------------------------------

class TrainClassifier(PipelineStep):
    name = "train classifier"

    def __init__(self, source: Path, out: Path, cfg: ClassifyTrainStage, skip_bad_lines: bool):
        super().__init__()
        self.source, self.out, self.cfg, self.skip_bad_lines = Path(source), Path(out), cfg, skip_bad_lines

    def run(self, data, rank: int = 0, world_size: int = 1):
        from phi1.data.classify import run_classify_train

        meta = run_classify_train(self.source, self.out, cfg=self.cfg, workers=1, skip_bad_lines=self.skip_bad_lines,
                                  quiet=True)
        self.stat_update("labelled", value=meta["n_labelled"])
        for key in ("encoded", "cached", "truncated", "forward_passes"):
            self.stat_update(key, value=int(meta["embeddings"].get(key, 0)))


def classifier_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / "classifier.joblib"


def build_classify_train(ctx: StageContext, cfg: ClassifyTrainStage) -> list[Block]:
    return [Block("train", [TrainClassifier(ctx.input, classifier_path(ctx.dir), cfg, ctx.skip_bad_lines)], tasks=1),
            commit_block(ctx, files=["classifier.joblib.json"])]


def one_thread_per_task() -> None:
    """torch on one thread in a task: the parallelism is the tasks, and a forked worker whose parent had
    used torch's OpenMP pool hangs in its first parallel op otherwise."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class EduScorer(PipelineStep):
    """`meta.edu_score` in [0, 1] (P(educational), or predicted label / 5), encoding in chunks."""

    name = "edu score"

    def __init__(self, cfg: ClassifyScoreStage):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank: int = 0, world_size: int = 1):
        from phi1.data.classify import _predict, load_classifier

        if world_size > 1:
            one_thread_per_task()
        model, meta, enc = load_classifier(self.cfg.classifier, self.cfg.encoder, self.cfg)
        if hasattr(model, "n_jobs"):
            model.n_jobs = 1  # parallelism is the tasks
        for batch in batched(data, max(512, self.cfg.batch_size)):
            cut = enc.truncated
            for doc, s in zip(batch, _predict(model, meta["task"], enc.encode([d.text for d in batch]))):
                doc.metadata["edu_score"] = round(float(s), 4)
                self.stat_update("scored")
            if enc.truncated > cut:
                self.stat_update("truncated", value=enc.truncated - cut)
            yield from batch


def build_classify_score(ctx: StageContext, cfg: ClassifyScoreStage) -> list[Block]:
    return _one_block(ctx, [EduScorer(cfg)], "score")


# ---- filter ---------------------------------------------------------------------------------------

def tie_key(doc_id: str) -> int:
    """A record's place among equal scores (a hash of its id): a budget cut falls between two records,
    the same ones whatever the task count."""
    return int.from_bytes(hashlib.blake2b(str(doc_id).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big") >> 1  # 63 bits: exact in int64 and in JSON


class TokenCounter:
    """Tokens of a text: with a tokenizer directory's tokenizer, or estimated as UTF-8 bytes / bytes_per_token."""

    def __init__(self, tokenizer: str | None, bytes_per_token: float):
        self.tokenizer, self.bytes_per_token, self._tok = tokenizer, bytes_per_token, None

    def __call__(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [int(np.ceil(len(t.encode("utf-8", "surrogatepass")) / self.bytes_per_token)) for t in texts]
        if self._tok is None:
            from phi1.tokenizer import load_tokenizer

            self._tok = load_tokenizer(self.tokenizer)
        return [len(x) for x in self._tok.encode_batch(texts)]


class ScoreFilter(BaseFilter):
    """Keeps records with `meta.<field>` >= the cut-off (a number, or read from the cut-off block's file);
    with a token budget, a record at exactly the cut-off score is kept when its tie key is <= the file's."""

    name = "score filter"

    def __init__(self, field: str, cut: float | None = None, cut_file: str | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.field, self.cut, self.cut_file, self.tie = field, cut, cut_file, None

    def filter(self, doc: Document):
        if self.cut is None:
            c = json.loads(Path(self.cut_file).read_text())
            self.cut, self.tie = c["cutoff"], c.get("tie")
        s = doc.metadata.get(self.field)
        if not isinstance(s, (int, float)) or isinstance(s, bool):
            return False, f"no_{self.field}"
        if s > self.cut or (s == self.cut and (self.tie is None or tie_key(doc.id) <= self.tie)):
            return True
        return False, "below_cutoff" if s < self.cut or self.tie is None else "over_budget"


class DumpScores(PipelineStep):
    """Each task's scores (and with a budget, token counts and tie keys) to one .npz file."""

    name = "collect scores"

    def __init__(self, field: str, folder: str, counter: TokenCounter | None = None):
        super().__init__()
        self.field, self.folder, self.counter = field, Path(folder), counter

    def run(self, data, rank: int = 0, world_size: int = 1):
        vals, toks, ties = [], [], []
        for batch in batched(data, 512):
            scored = [d for d in batch if isinstance(d.metadata.get(self.field), (int, float))
                      and not isinstance(d.metadata.get(self.field), bool)]
            vals += [float(d.metadata[self.field]) for d in scored]
            if self.counter is not None:
                toks += self.counter([d.text for d in scored])
                ties += [tie_key(d.id) for d in scored]
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{rank:05d}.npz.tmp"
        with tmp.open("wb") as fh:
            np.savez(fh, scores=np.asarray(vals, dtype=np.float64), tokens=np.asarray(toks, dtype=np.int64),
                     ties=np.asarray(ties, dtype=np.int64))
        os.replace(tmp, self.folder / f"{rank:05d}.npz")
        if False:
            yield


class Cutoff(PipelineStep):
    """One task: the score that keeps the best `top_fraction` (numpy quantile, method "higher"; ties
    kept), or the best records whose tokens add up to at most `keep_tokens` (best score first, ties in
    tie-key order: the kept tokens are within one record of the budget)."""

    name = "score cut-off"

    def __init__(self, folder: str, out: str, top_fraction: float | None = None, keep_tokens: int | None = None):
        super().__init__()
        self.folder, self.top_fraction, self.keep_tokens, self.out = Path(folder), top_fraction, keep_tokens, Path(out)

    def run(self, data, rank: int = 0, world_size: int = 1):
        from phi1.utils.io import atomic_write_json

        parts = [np.load(f) for f in sorted(self.folder.glob("*.npz"))]
        scores = np.concatenate([p["scores"] for p in parts] or [np.zeros(0)])
        if self.keep_tokens is None:
            cut = float(np.quantile(scores, 1.0 - self.top_fraction, method="higher")) if len(scores) else float("inf")
            atomic_write_json(self.out, {"cutoff": cut, "scored": int(len(scores)), "top_fraction": self.top_fraction})
            return
        tokens = np.concatenate([p["tokens"] for p in parts] or [np.zeros(0, np.int64)])
        ties = np.concatenate([p["ties"] for p in parts] or [np.zeros(0, np.int64)])
        order = np.lexsort((ties, -scores))  # best score first; equal scores by tie key
        kept = int(np.searchsorted(np.cumsum(tokens[order]), self.keep_tokens, side="right"))
        out = {"scored": int(len(scores)), "keep_tokens": self.keep_tokens, "tokens_scored": int(tokens.sum()),
               "kept": kept, "kept_tokens": int(tokens[order[:kept]].sum())}
        if kept == 0:
            out.update(cutoff=float("inf"), tie=None)
        else:
            last = order[kept - 1]
            out.update(cutoff=float(scores[last]), tie=int(ties[last]))
        atomic_write_json(self.out, out)
        if False:
            yield


@dataclass
class FilterStage:
    min_score: float | None = None
    top_fraction: float | None = None
    keep_tokens: int | None = None  # keep the best records up to this many tokens (the paper kept ~6B)
    tokenizer: str | None = None    # with keep_tokens: count with this tokenizer directory ...
    bytes_per_token: float = 3.5    # ... or estimate tokens as UTF-8 bytes / this (codegen's tokenizer on Python)
    field: str = "edu_score"

    def validate(self) -> None:
        given = [k for k in ("min_score", "top_fraction", "keep_tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("filter: give exactly one of min_score, top_fraction or keep_tokens"
                              + (f" (got {', '.join(given)})" if given else ""))
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"filter.top_fraction: {self.top_fraction} must be in (0, 1]")
        if self.keep_tokens is not None and (isinstance(self.keep_tokens, bool) or self.keep_tokens < 1):
            raise ConfigError(f"filter.keep_tokens: {self.keep_tokens} must be a whole number >= 1")
        if not self.bytes_per_token > 0:
            raise ConfigError(f"filter.bytes_per_token: {self.bytes_per_token} must be > 0")
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            raise ConfigError(f"filter.tokenizer: {self.tokenizer}: not a directory; give a tokenizer directory "
                              "(tokenizer.json, or vocab.json + merges.txt)")


def build_filter(ctx: StageContext, cfg: FilterStage) -> list[Block]:
    if cfg.min_score is not None:
        return _one_block(ctx, [ScoreFilter(cfg.field, cut=cfg.min_score, exclusion_writer=ctx.rejected_writer())])
    scores, cut = ctx.work / "scores", ctx.dir / "cutoff.json"
    counter = TokenCounter(cfg.tokenizer, cfg.bytes_per_token) if cfg.keep_tokens is not None else None
    return [
        Block("scores", [first_pass(ctx.reader()), DumpScores(cfg.field, str(scores), counter)], tasks=ctx.tasks),
        Block("cutoff", [Cutoff(str(scores), str(cut), cfg.top_fraction, cfg.keep_tokens)], tasks=1),
        Block("filter", [ctx.reader(), ScoreFilter(cfg.field, cut_file=str(cut), exclusion_writer=ctx.rejected_writer()),
                         ctx.writer()], tasks=ctx.tasks),
        commit_block(ctx, files=["cutoff.json"]),
    ]


# ---- decontaminate --------------------------------------------------------------------------------

@dataclass
class DecontaminateStage:
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])  # built-in benchmarks to protect (humaneval)
    benchmark_files: list[str] = field(default_factory=list)  # benchmark JSONL files (HumanEval or MBPP format)
    ngram: int = 13  # tokens per n-gram
    ngram_threshold: float = 0.5  # fraction of a task's n-grams that flags a record
    ast_threshold: float = 0.8  # normalised-AST similarity that flags a function
    use_ast: bool = True  # also the syntax-tree check (off: n-gram check only)
    embedding: str | None = None  # also flag functions close to a benchmark's in this encoder (minilm, st:DIR, hf:DIR)
    embedding_threshold: float = 0.85  # cosine similarity that flags a function (with `embedding`)
    embedding_ast_floor: float = 0.4  # with `embedding`: the least syntax-tree similarity that an embedding hit needs
    ratio_threshold: float | None = 0.5  # difflib ratio that confirms a partial n-gram match (None: off)

    def validate(self) -> None:
        self.decontaminator_kwargs()  # types
        for f in self.benchmark_files:
            if not Path(f).is_file():
                raise ConfigError(f"decontaminate.benchmark_files: {f}: benchmark file not found; "
                                  "give the path of a HumanEval- or MBPP-format JSONL file")

    def decontaminator_kwargs(self) -> dict:
        return dict(benchmarks=list(self.benchmarks), benchmark_files=list(self.benchmark_files), ngram=self.ngram,
                    ngram_threshold=self.ngram_threshold, ast_threshold=self.ast_threshold, use_ast=self.use_ast,
                    embedding=self.embedding, embedding_threshold=self.embedding_threshold,
                    embedding_ast_floor=self.embedding_ast_floor, ratio_threshold=self.ratio_threshold)


class DecontaminationFilter(BaseFilter):
    """Drops records that overlap a benchmark task (13-gram containment, syntax-tree similarity, and
    optionally embedding + syntax); `meta.contamination` on a rejected record lists each hit."""

    name = "decontaminate"

    def __init__(self, kwargs: dict, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.kwargs, self._deco = kwargs, None

    def run(self, data, rank: int = 0, world_size: int = 1):
        if world_size > 1 and self.kwargs.get("embedding"):
            one_thread_per_task()
        yield from super().run(data, rank, world_size)

    def filter(self, doc: Document):
        from phi1.data.decontam import Decontaminator

        if self._deco is None:
            self._deco = Decontaminator(**self.kwargs)
        hits = self._deco.check(doc.text)
        if not hits:
            return True
        doc.metadata["contamination"] = [h.to_dict() for h in hits]
        return False, "benchmark_overlap"


def build_decontaminate(ctx: StageContext, cfg: DecontaminateStage) -> list[Block]:
    return _one_block(ctx, [DecontaminationFilter(cfg.decontaminator_kwargs(), ctx.rejected_writer())])


# ---- mine exercises -------------------------------------------------------------------------------

@dataclass
class MineStage:
    decontaminate: bool = True  # decontaminate the exercises against the benchmarks
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])  # built-in benchmarks to protect
    benchmark_files: list[str] = field(default_factory=list)  # benchmark JSONL files (HumanEval or MBPP format)
    min_doc_chars: int = 20  # shortest docstring kept
    min_body_lines: int = 2  # shortest body kept
    max_body_lines: int = 60  # longest body kept
    max_prompt_chars: int = 2000  # longest prompt (imports + signature + docstring) kept
    allow_private: bool = False  # also mine functions whose name starts with _

    def mine_config(self):
        from phi1.data.mine import MineConfig

        return MineConfig(self.min_doc_chars, self.min_body_lines, self.max_body_lines, self.max_prompt_chars,
                          self.allow_private)

    def validate(self) -> None:
        self.mine_config().validate()


class MineExercises(PipelineStep):
    """Each self-contained, documented top-level function of a record becomes an exercise record:
    `meta.prompt` (needed imports + signature + docstring), `meta.completion` (the body)."""

    name = "mine exercises"

    def __init__(self, cfg: MineStage):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank: int = 0, world_size: int = 1):
        from phi1.data.mine import extract_exercises

        mc = self.cfg.mine_config()
        for doc in data:
            self.stat_update("files")
            exercises, why = extract_exercises(doc.text, mc)
            for k, v in why.items():
                self.stat_update(f"skipped_{k}", value=v)
            for ex in exercises:
                self.stat_update("exercises")
                yield Document(text=ex["prompt"] + ex["completion"], id=f"{doc.id}::{ex['name']}",
                               metadata={"prompt": ex["prompt"], "completion": ex["completion"], "function": ex["name"],
                                         "source_id": doc.id, "source": doc.metadata.get("source"), "kind": "exercise"})


def build_mine(ctx: StageContext, cfg: MineStage) -> list[Block]:
    """Extract in parallel, then the same MinHash dedup and decontamination as the corpus."""
    cand, unique = ctx.work / "candidates", ctx.work / "unique"
    blocks = [Block("extract", [ctx.reader(), MineExercises(cfg), RecordWriter(cand)], tasks=ctx.tasks)]
    for b in dedup_blocks(cand, ctx.work / "dedup", unique, ctx.rejected_writer("dedup"), ctx.tasks, DedupStage()):
        b.name = f"dedup-{b.name}"
        blocks.append(b)
    if cfg.decontaminate:
        kw = DecontaminateStage(list(cfg.benchmarks), list(cfg.benchmark_files)).decontaminator_kwargs()
        blocks.append(Block("decontaminate", [RecordReader(unique),
                                              DecontaminationFilter(kw, ctx.rejected_writer("decontaminate")),
                                              ctx.writer()], tasks=ctx.tasks))
    else:
        blocks.append(Block("copy", [RecordReader(unique), ctx.writer()], tasks=ctx.tasks))
    blocks.append(commit_block(ctx))
    return blocks


# ---- the table of stage kinds ---------------------------------------------------------------------

from phi1.data.collect_steps import CollectStage, build_collect  # noqa: E402  (it imports the helpers above)
from phi1.data.classify import ClassifyScoreStage, ClassifyTrainStage  # noqa: E402
from phi1.data.annotate import AnnotateStage  # noqa: E402

KINDS: dict[str, tuple[type, Any]] = {
    "collect": (CollectStage, build_collect),
    "dedup": (DedupStage, build_dedup),
    "annotate": (AnnotateStage, build_annotate),
    "classify-train": (ClassifyTrainStage, build_classify_train),
    "classify-score": (ClassifyScoreStage, build_classify_score),
    "filter": (FilterStage, build_filter),
    "decontaminate": (DecontaminateStage, build_decontaminate),
    "mine-exercises": (MineStage, build_mine),
}


def stage_config(kind: str, options: dict, where: str, *, validate: bool = True):
    """The kind's config dataclass from pipeline options, naming the field and type on error
    (`validate=False`: names and types only, for a config that is completed later)."""
    cls, _ = KINDS[kind]
    known = {f.name: f for f in fields(cls)}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: not an option of stage kind {kind!r}; allowed: {sorted(known)}")
        _check_type(where, key, value, known[key])
    cfg = cls(**options)
    if validate:
        cfg.validate()
    return cfg


def _check_type(where: str, key: str, value, f) -> None:
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if isinstance(value, str) and value.startswith("@"):
        return
    ok = []
    for part in (a.strip() for a in ann.split("|")):
        base = part.split("[", 1)[0]
        ok.append(base)
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
              "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict),
              "None": lambda v: v is None}
    if any(checks.get(b, lambda v: True)(value) for b in ok):
        return
    raise ConfigError(f"{where}: option {key}: expected {' or '.join(ok)}, got {type(value).__name__} {value!r}")


