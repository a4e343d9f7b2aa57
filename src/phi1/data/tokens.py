"""Code tokens and hashed shingles shared by dedup and decontamination."""

from __future__ import annotations

import re
import zlib

import numpy as np

# Identifiers, numbers, string-quote runs and single punctuation characters:
# enough structure for overlap measures without a full Python tokenizer.
_TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S")
_COMMENT_RE = re.compile(r"(?m)^\s*#.*$")

_MASK32 = np.uint64(0xFFFFFFFF)


def code_tokens(text: str, lower: bool = False, strip_comments: bool = False) -> list[str]:
    """Split code into identifier/number/punctuation tokens (whitespace and layout ignored)."""
    if strip_comments:
        text = _COMMENT_RE.sub("", text)
    if lower:
        text = text.lower()
    return _TOKEN_RE.findall(text)


def token_hashes(tokens: list[str], cache: dict[str, int] | None = None) -> np.ndarray:
    """crc32 of each token (deterministic across processes, unlike hash())."""
    if cache is None:
        return np.fromiter((zlib.crc32(t.encode("utf-8", "surrogatepass")) for t in tokens), dtype=np.uint64, count=len(tokens))
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, t in enumerate(tokens):
        h = cache.get(t)
        if h is None:
            h = cache[t] = zlib.crc32(t.encode("utf-8", "surrogatepass"))
        out[i] = h
    return out


def shingle_hashes(tok_hashes: np.ndarray, k: int) -> np.ndarray:
    """32-bit hashes of every window of `k` consecutive tokens, vectorised.

    A document shorter than `k` tokens yields one shingle of all its tokens.
    """
    n = len(tok_hashes)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    if n < k:
        tok_hashes, k = tok_hashes, n
    m = len(tok_hashes) - k + 1
    acc = np.zeros(m, dtype=np.uint64)
    # Polynomial rolling combine mod 2^64, then fold to 32 bits.
    for j in range(k):
        acc = acc * np.uint64(0x100000001B3) + tok_hashes[j : j + m] + np.uint64(j + 1)
    return ((acc ^ (acc >> np.uint64(32))) & _MASK32).astype(np.uint32)


def ngram_set(tokens: list[str], n: int) -> set[int]:
    """Hashed n-grams of a token list as a Python set of ints."""
    if len(tokens) < n:
        return set()
    return set(shingle_hashes(token_hashes(tokens), n).tolist())
