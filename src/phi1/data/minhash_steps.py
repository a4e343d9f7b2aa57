"""The dedup stage's datatrove steps: MinHash signatures over code-token shingles, clustering that
keeps the first id, the filter that drops the rest; the four blocks that chain them (also used by
the exercises stage on the functions it mined); and `MinhashIndex`, the same decisions for records
held in memory (generated data being validated)."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file

from phi1.utils.io import temp_beside
from phi1.utils.safety import clean_stale_temps
from phi1.data.engine import Block, RecordReader, RecordWriter, first_pass
from phi1.data.minhash import DEDUP_THRESHOLD, MinhashParams, normalized_hash


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


def dedup_blocks(source: Path, work: Path, out, rejected, tasks: int, cfg: MinhashParams,
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
