"""The benches' reference for near-dedup: phi1's first, single-process dedup (before the datatrove
engine), kept here only to measure the engine against. Exact duplicates by a hash of the normalised
text; near duplicates by 128-permutation MinHash (datasketch's `affine32` scheme, computed with numpy
in worker processes) over 5-token code shingles in datasketch's `MinHashLSH` (threshold 0.85), each
candidate verified on the signatures; the first record in file order is kept. The LSH index lives
in the main process (about 4.5 KB per document).

    python bench/reference_dedup.py IN.jsonl OUT.jsonl REJECTED.jsonl [WORKERS]

Also `baseline_dedup_ids`: datasketch used the plain way (one `MinHash.update` per shingle).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from phi1.data.tokens import code_tokens, shingle_hashes, token_hashes

_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n+")
_CHUNK = 4096  # shingles per numpy block


def normalized_hash(text: str) -> str:
    t = text.replace("\r\n", "\n").replace("\r", "\n")
    t = _BLANK_LINES.sub("\n", _TRAILING_WS.sub("", t)).strip()
    return hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest()


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class SignatureMaker:
    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 5):
        self.num_perm, self.seed, self.shingle = num_perm, seed, shingle
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32)[None, :], b.astype(np.uint32)[None, :]

    def signature(self, text: str) -> np.ndarray:
        hv = _fmix32(np.unique(shingle_hashes(token_hashes(code_tokens(text)), self.shingle)))
        sig = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hv), _CHUNK):
                np.minimum(sig, (hv[start:start + _CHUNK, None] * self.a + self.b).min(axis=0), out=sig)
        return sig


_MAKER = SignatureMaker()


def _keys(texts: list[str]) -> list[tuple[str, np.ndarray]]:
    return [(normalized_hash(t), _MAKER.signature(t)) for t in texts]


def _batches(path: str, size: int = 64):
    batch = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                batch.append(json.loads(line))
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _keyed(pool, path: str, workers: int):
    """(record batch, its keys) in file order, at most 2 * workers batches in flight."""
    inflight: deque = deque()
    for batch in _batches(path):
        inflight.append((batch, pool.submit(_keys, [r["text"] for r in batch])))
        if len(inflight) >= 2 * workers:
            b, fut = inflight.popleft()
            yield b, fut.result()
    while inflight:
        b, fut = inflight.popleft()
        yield b, fut.result()


def dedup_file(inp: str, out: str, rejected: str, workers: int = 2, threshold: float = 0.85) -> int:
    """Keep the first of each group of exact or near duplicates (file order); returns the kept count."""
    lsh = MinHashLSH(threshold=threshold, num_perm=_MAKER.num_perm)
    exact: dict[str, str] = {}
    sigs: dict[str, np.ndarray] = {}
    kept = 0
    with ProcessPoolExecutor(workers) as pool, open(out, "w") as ko, open(rejected, "w") as ro:
        for recs, keys in _keyed(pool, inp, workers):
            for rec, (h, sig) in zip(recs, keys):
                dup, sim = exact.get(h), 1.0
                if dup is None:
                    exact[h] = rec["id"]
                    mh = LeanMinHash(seed=_MAKER.seed, hashvalues=sig, scheme="affine32")
                    best = None
                    for cand in lsh.query(mh):  # LSH candidates, verified on the signatures
                        s = float(np.mean(sigs[cand] == sig))
                        if s >= threshold and (best is None or s > best[1]):
                            best = (cand, s)
                    if best is None:
                        lsh.insert(rec["id"], mh, check_duplication=False)
                        sigs[rec["id"]] = sig
                        ko.write(json.dumps(rec) + "\n")
                        kept += 1
                        continue
                    dup, sim = best
                rec["meta"] = {**rec.get("meta", {}), "duplicate_of": dup, "similarity": round(sim, 3)}
                ro.write(json.dumps(rec) + "\n")
    return kept


def baseline_dedup_ids(texts: list[str], threshold: float = 0.85, num_perm: int = 128, shingle: int = 5) -> list[int]:
    """datasketch the plain way: one MinHash per doc, `.update` per shingle. Returns kept indices."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept = []
    for i, text in enumerate(texts):
        toks = code_tokens(text)
        m = MinHash(num_perm=num_perm)
        for j in range(max(1, len(toks) - shingle + 1)):
            m.update(" ".join(toks[j:j + shingle]).encode("utf-8", "surrogatepass"))
        if lsh.query(m):
            continue
        lsh.insert(str(i), m)
        kept.append(i)
    return kept


if __name__ == "__main__":
    print(dedup_file(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2))
