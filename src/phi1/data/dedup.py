"""`phi1 data dedup`: exact (normalised hash) and near-duplicate (MinHash + LSH) removal.

Signatures are computed in worker processes with vectorised numpy hashing that
reproduces datasketch's "affine32" permutation scheme, so they drop straight into
datasketch's `MinHashLSH` index (and compare with any `datasketch.MinHash` built
with the same seed/num_perm over the same 32-bit shingle hashes).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from phi1.errors import ConfigError
from phi1.data.parallel import parallel_map
from phi1.data.records import RecordSink, check_stage_outputs, StageReport, finish_report, iter_records
from phi1.data.tokens import code_tokens, shingle_hashes, token_hashes
from phi1.utils.progress import progress

_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n+")
_CHUNK = 4096  # shingles per numpy block: bounds memory at CHUNK * num_perm * 4 bytes


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.85
    num_perm: int = 128
    shingle: int = 5
    seed: int = 1
    workers: int = 0
    batch: int = 64

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold: {self.threshold} must be in (0, 1]")
        if self.num_perm < 16 or self.num_perm > 1024:
            raise ConfigError(f"dedup.num_perm: {self.num_perm} must be between 16 and 1024")
        if self.shingle < 1:
            raise ConfigError(f"dedup.shingle: {self.shingle} must be >= 1 (tokens per shingle)")
        if self.workers < 0:
            raise ConfigError(f"dedup.workers: {self.workers} must be >= 0 (0 = one per CPU)")


def normalized_hash(text: str) -> str:
    """Hash of a text with trailing spaces, blank lines and line endings normalised."""
    t = text.replace("\r\n", "\n").replace("\r", "\n")
    t = _BLANK_LINES.sub("\n", _TRAILING_WS.sub("", t)).strip()
    return hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest()


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3 finalizer, as datasketch's affine32 scheme pre-mixes inputs.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class SignatureMaker:
    """MinHash signatures of code texts; picklable so worker processes can build one each."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 5):
        self.num_perm, self.seed, self.shingle = num_perm, seed, shingle
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a = a.astype(np.uint32)[None, :]
        self.b = b.astype(np.uint32)[None, :]

    def shingles(self, text: str) -> np.ndarray:
        return shingle_hashes(token_hashes(code_tokens(text)), self.shingle)

    def signature(self, text: str) -> np.ndarray:
        hv = _fmix32(np.unique(self.shingles(text)))
        sig = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hv), _CHUNK):
                block = hv[start : start + _CHUNK, None]
                np.minimum(sig, (block * self.a + self.b).min(axis=0), out=sig)
        return sig

    def minhash(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")


_WORKER: SignatureMaker | None = None
_EXACT = True


def _init_worker(num_perm: int, seed: int, shingle: int, exact: bool = True, near: bool = True) -> None:
    global _WORKER, _EXACT
    _WORKER = SignatureMaker(num_perm, seed, shingle) if near else None
    _EXACT = exact


def _keys(rec: dict) -> tuple[str | None, np.ndarray | None]:
    """(normalised hash, MinHash signature) of one record; runs in worker processes."""
    text = rec["text"]
    return (normalized_hash(text) if _EXACT else None), (_WORKER.signature(text) if _WORKER else None)


class DuplicateIndex:
    """Remembers what was kept; `add` says whether a new text duplicates it (first come is kept).

    Usable on its own (`add_text(key, text)`, e.g. to validate generated data) or
    with hashes and signatures computed elsewhere (`add(key, h, sig)`, as
    `run_dedup` does with its worker processes).
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, seed: int = 1, shingle: int = 5,
                 exact: bool = True, near: bool = True):
        DedupConfig(exact, near, threshold, num_perm, shingle, seed).validate()
        self.threshold, self.exact, self.near = threshold, exact, near
        self.maker = SignatureMaker(num_perm, seed, shingle)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
        self._exact: dict[str, str] = {}
        self._sigs: dict[str, np.ndarray] = {}

    def add_text(self, key: str, text: str) -> tuple[str, str, float] | None:
        return self.add(key, normalized_hash(text) if self.exact else None,
                        self.maker.signature(text) if self.near else None)

    def add(self, key: str, h: str | None, sig: np.ndarray | None) -> tuple[str, str, float] | None:
        """(reason, duplicate_of, similarity) if a duplicate, else None after remembering the text."""
        if h is not None:
            if h in self._exact:
                return "exact_duplicate", self._exact[h], 1.0
            self._exact[h] = key
        if sig is not None:
            mh = self.maker.minhash(sig)
            best = None
            # LSH candidates are verified on the signatures: LSH alone has false positives.
            for cand in self.lsh.query(mh):
                sim = float(np.mean(self._sigs[cand] == sig))
                if sim >= self.threshold and (best is None or sim > best[1]):
                    best = (cand, sim)
            if best is not None:
                return "near_duplicate", best[0], best[1]
            if key in self._sigs:  # ids should be unique; keep the index consistent if they are not
                key = f"{key}#{len(self._sigs)}"
            self.lsh.insert(key, mh, check_duplication=False)
            self._sigs[key] = sig
        return None


def run_dedup(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    exact: bool = True,
    near: bool = True,
    threshold: float = 0.85,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 1,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Keep the first of each group of exact or near duplicates; report which record each dropped one duplicated."""
    cfg = DedupConfig(exact, near, threshold, num_perm, shingle, seed, workers)
    cfg.validate()
    report = StageReport("dedup", input=str(input_path))
    check_stage_outputs(report.stage, input_path, output_path, rejected, overwrite=overwrite)
    report.details.update(threshold=threshold, num_perm=num_perm, shingle=shingle)
    index = DuplicateIndex(threshold, num_perm, seed, shingle, exact, near)
    size = os.path.getsize(input_path) if os.path.exists(input_path) else None
    bar = progress(total=size, desc="dedup", unit="B", unit_scale=True)
    examples: list[dict] = []
    try:
        with RecordSink(output_path, report, rejected, overwrite=overwrite) as sink:
            records = iter_records(input_path, report, skip_bad_lines=skip_bad_lines)
            # Hashing and signatures (where the time goes) run in workers; the LSH index lives here.
            keyed = parallel_map(_keys, records, workers=workers, batch_size=cfg.batch,
                                 initializer=_init_worker, initargs=(num_perm, seed, shingle, exact, near))
            for rec, (h, sig) in keyed:
                bar.update(len(rec["text"]))
                dup = index.add(rec["id"], h, sig)
                if dup is None:
                    sink.keep(rec)
                    continue
                reason, of, sim = dup
                why = {"similarity": round(sim, 3)} if reason == "near_duplicate" else {}
                sink.reject(rec, reason, duplicate_of=of, **why)
                if len(examples) < 50:
                    examples.append({"id": rec["id"], "duplicate_of": of, "similarity": round(sim, 3)})
    finally:
        bar.close()
    report.details["examples"] = examples
    return finish_report(report, quiet)


def baseline_dedup_ids(texts: list[str], threshold: float = 0.85, num_perm: int = 128, shingle: int = 5) -> list[int]:
    """Reference: serial datasketch, one MinHash per doc, `.update` per shingle. Returns kept indices."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept = []
    for i, text in enumerate(texts):
        toks = code_tokens(text)
        m = MinHash(num_perm=num_perm)
        for j in range(max(1, len(toks) - shingle + 1)):
            m.update(" ".join(toks[j : j + shingle]).encode("utf-8", "surrogatepass"))
        if lsh.query(m):
            continue
        lsh.insert(str(i), m)
        kept.append(i)
    return kept
