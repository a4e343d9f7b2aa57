"""The dedup stage's datatrove steps: MinHash signatures over code-token shingles, the filter that
drops what the clustering (`phi1.data.minhash_cluster`) marked; the four blocks that chain them (also used by
the exercises stage on the functions it mined); and `MinhashIndex`, the same decisions for records
held in memory (generated data being validated)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature, _mersenne_prime

from phi1.utils.io import temp_beside
from phi1.utils.safety import clean_stale_temps
from phi1.data.engine import Block, RecordReader, RecordWriter, first_pass
from phi1.data.minhash import DEDUP_THRESHOLD, MinhashParams, band_keys, normalized_hash
from phi1.data.minhash_cluster import HashRangeBuckets, KeepFirstIdCluster


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

    SHINGLE_CHUNK = 256  # rows of the (shingles x b*r) hash matrix at once: 256 KB, which stays in cache

    def flat_signature(self, shingles: np.ndarray) -> np.ndarray:
        """datatrove's signature (all b*r hashes, band after band): min over shingles s of
        ((s * a + b) mod 2^64) mod (2^61 - 1), exactly. Two differences make it 3-5x faster than
        datatrove's one expression over all shingles: the matrix is taken SHINGLE_CHUNK rows at a time
        (the minimum of the chunks' minima is the same; a 1 MB file costs a few MB, not hundreds, and
        the chunk stays in the CPU cache), and the remainder by the Mersenne prime p = 2^61 - 1 is
        y mod p = (y & p) + (y >> 61), less p once if that reaches p, in place of a 64-bit division."""
        if self.config.hash_config.precision != 64:
            return np.asarray(super().get_signature(shingles), dtype=np.uint64).reshape(-1)
        a, b = self.parameters
        p, top = np.uint64(_mersenne_prime), np.uint64(61)
        low = None
        for i in range(0, max(len(shingles), 1), self.SHINGLE_CHUNK):
            y = shingles[i:i + self.SHINGLE_CHUNK] * a  # uint64: wraps mod 2^64, as datatrove's does
            y += b
            r = y & p
            y >>= top
            r += y
            np.minimum(r, r - p, out=r)  # r - p wraps to a huge value when r < p
            part = r.min(axis=0)
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
        ids_file, sig_file = self.ids_folder / f"{rank:05d}.jsonl", self.ids_folder / f"{rank:05d}.sig"
        for f in (ids_file, sig_file):  # a killed task's temps (its pid is dead)
            clean_stale_temps(self.ids_folder, stem=f.name)
        tmp, tmp_sig = temp_beside(ids_file), temp_beside(sig_file)
        with tmp.open("w") as ids, tmp_sig.open("wb") as self._full:
            def tee():
                for i, doc in enumerate(data):
                    self._doc_idx = i
                    ids.write(json.dumps([doc.id, normalized_hash(doc.text)]) + "\n")
                    yield doc

            super().run(tee(), rank, world_size)  # not a generator: it writes the signature files
        os.replace(tmp_sig, self.ids_folder / f"{rank:05d}.sig")  # every hash of every document, for verifying
        os.replace(tmp, self.ids_folder / f"{rank:05d}.jsonl")


class DuplicateFilter(PipelineStep):
    """Drops the documents the clustering marked, naming the record kept instead (meta.duplicate_of)."""

    name = "drop duplicates"

    def __init__(self, remove_folder: str, exclusion_writer=None):
        super().__init__()
        self.remove_folder, self.exclusion_writer = Path(remove_folder), exclusion_writer

    @contextlib.contextmanager
    def marks(self, rank: int):
        """This task's marks, [index, kept id, kind, similarity] sorted by index: the clustering's
        `RANK.dupof.jsonl`, read alongside the documents, one line at a time."""
        f = self.remove_folder / f"{rank:06d}.dupof.jsonl"
        if not f.exists():
            yield iter(())
            return
        with f.open() as fh:
            yield map(json.loads, fh)

    def run(self, data, rank: int = 0, world_size: int = 1):
        with self.marks(rank) as rows, self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            nxt = next(rows, None)
            for idx, doc in enumerate(data):
                self.stat_update("total")
                if nxt is not None and nxt[0] == idx:
                    _, kept, kind, sim = nxt
                    nxt = next(rows, None)
                    self.stat_update(f"dropped_{kind}")
                    if writer:
                        doc.metadata.update(filter_reason=kind, duplicate_of=kept)
                        if kind == "near_duplicate":
                            doc.metadata["similarity"] = sim
                        writer.write(doc, rank)
                    continue
                self.stat_update("forwarded")
                yield doc


def dedup_blocks(source: Path, work: Path, out, rejected, tasks: int, cfg: MinhashParams,
                 skip_bad_lines: bool = False, bad_lines: Path | None = None, tasks_per_band: int | None = None,
                 cluster_memory_mb: int = 1024) -> list[Block]:
    """The four MinHash blocks: signatures (tasks), buckets (`tasks_per_band` tasks per band, each a
    hash range; default: tasks // bands, at least 1), clusters (one task, in `cluster_memory_mb`),
    filter (tasks). `rejected` is a writer for the dropped records, or None."""
    mh = cfg.minhash()
    per_band = tasks_per_band or max(1, tasks // mh.num_buckets)
    sigs, ids, buckets, remove = (str(work / n) for n in ("signatures", "ids", "buckets", "remove"))
    return [
        Block("signatures", [first_pass(RecordReader(source, skip_bad_lines)), CodeMinhashSignature(sigs, mh, ids)], tasks=tasks),
        Block("buckets", [HashRangeBuckets(sigs, buckets, config=mh)], tasks=mh.num_buckets * per_band),
        Block("clusters", [KeepFirstIdCluster(buckets, ids, remove, mh.num_buckets * mh.hashes_per_bucket,
                                              cfg.verify_threshold, mh.num_buckets, cluster_memory_mb)], tasks=1),
        Block("filter", [RecordReader(source, skip_bad_lines, bad_lines), DuplicateFilter(remove, rejected),
                                 out if isinstance(out, RecordWriter) else RecordWriter(out)],
              tasks=tasks),
    ]


class MinhashIndex:
    """The dedup stage's decisions for records held in memory (generated data being validated): the
    same code-token signatures, bands and verification, and the first record added is kept. `add_text`
    returns (reason, duplicate_of, similarity) for a duplicate, else None after remembering the text."""

    def __init__(self, threshold: float | None = None, shingle: int | None = None, seed: int | None = None):
        opts = {k: v for k, v in (('shingle', shingle), ('seed', seed)) if v is not None}
        self.cfg = MinhashParams(threshold=DEDUP_THRESHOLD if threshold is None else threshold, **opts)
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
        bands = band_keys(sig, self.cfg.num_buckets)
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
