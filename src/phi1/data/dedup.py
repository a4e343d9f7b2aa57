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
from phi1.data.records import RecordSink, StageReport, finish_report, iter_records
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
) -> StageReport:
    """Keep the first of each group of exact or near duplicates; report which record each dropped one duplicated."""
    cfg = DedupConfig(exact, near, threshold, num_perm, shingle, seed, workers)
    cfg.validate()
    report = StageReport("dedup", input=str(input_path))
    report.details.update(threshold=threshold, num_perm=num_perm, shingle=shingle)
    seen_exact: dict[str, str] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
    maker = SignatureMaker(num_perm, seed, shingle)
    sigs_by_key: dict[str, np.ndarray] = {}
    size = os.path.getsize(input_path) if os.path.exists(input_path) else None
    bar = progress(total=size, desc="dedup", unit="B", unit_scale=True)
    examples: list[dict] = []
    try:
        with RecordSink(output_path, report, rejected) as sink:
            records = iter_records(input_path, report, skip_bad_lines=skip_bad_lines)
            # Hashing and signatures (where the time goes) run in workers; the LSH index lives here.
            keyed = parallel_map(_keys, records, workers=workers, batch_size=cfg.batch,
                                 initializer=_init_worker, initargs=(num_perm, seed, shingle, exact, near))
            for rec, (h, sig) in keyed:
                bar.update(len(rec["text"]))
                if h is not None:
                    if h in seen_exact:
                        sink.reject(rec, "exact_duplicate", duplicate_of=seen_exact[h])
                        _example(examples, rec, seen_exact[h], 1.0)
                        continue
                    seen_exact[h] = rec["id"]
                if sig is not None:
                    mh = maker.minhash(sig)
                    dup = _near_match(lsh, mh, sigs_by_key, threshold)
                    if dup is not None:
                        sink.reject(rec, "near_duplicate", duplicate_of=dup[0], similarity=round(dup[1], 3))
                        _example(examples, rec, dup[0], dup[1])
                        continue
                    key = rec["id"] if rec["id"] not in sigs_by_key else f"{rec['id']}#{report.read}"
                    lsh.insert(key, mh, check_duplication=False)
                    sigs_by_key[key] = sig
                sink.keep(rec)
    finally:
        bar.close()
    report.details["examples"] = examples
    return finish_report(report, quiet)


def _near_match(lsh: MinHashLSH, mh: LeanMinHash, sigs: dict, threshold: float):
    """The best already-kept candidate whose estimated Jaccard clears the threshold (LSH alone has false positives)."""
    best = None
    for key in lsh.query(mh):
        sim = float(np.mean(sigs[key] == mh.hashvalues))
        if sim >= threshold and (best is None or sim > best[1]):
            best = (key, sim)
    return best


def _example(examples: list, rec: dict, dup_of: str, sim: float) -> None:
    if len(examples) < 50:
        examples.append({"id": rec["id"], "duplicate_of": dup_of, "similarity": round(sim, 3)})


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
