"""MinHash near-duplicate settings (numpy only, no datatrove): the dedup stage's bands, rows and
threshold, and the normalised exact hash. The datatrove steps and the in-memory index are in
`phi1.data.minhash_steps`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


from phi1.errors import ConfigError

BANDS, ROWS = 9, 14  # the LSH bands b and rows r per band: 50% point (1/9)^(1/14) = 0.855
DEDUP_THRESHOLD = 0.85
"""The near-duplicate Jaccard threshold of the in-memory index (synthetic data validation); the
corpus dedup stage's default is its bands' 50% point (9 x 14, about 0.855)."""


def normalized_hash(text: str) -> str:
    """Hash of the text with line endings, trailing spaces/tabs and blank lines normalised.

    Line-wise `rstrip(" \\t")` gives the same result as the `[ \\t]+$` regex at ~3x its speed
    (and ~6x that of two regex passes over the whole text)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    norm = "\n".join([ln.rstrip(" \t") for ln in lines if ln and not ln.isspace()]).strip()
    return hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def band_keys(sig, num_buckets: int) -> list[tuple[int, bytes]]:
    """A signature's (band, rows' bytes) keys: two documents are LSH candidates when one key is equal."""
    r = len(sig) // num_buckets
    return [(b, sig[b * r:(b + 1) * r].tobytes()) for b in range(num_buckets)]


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
class MinhashParams:
    """The MinHash LSH settings of the dedup stage and of the in-memory index. `num_buckets` bands
    of `hashes_per_bucket` rows: two documents become candidates when all rows of one band agree, which happens with probability
    1 - (1 - J^r)^b for Jaccard J; the 50% point is about (1/b)^(1/r) = 0.855 for b=9, r=14.
    `threshold`, when given, picks the bands instead (`bands_for`: of the pairs with at most 128
    hashes whose 50% point is within 0.01 of it, the one with the most hashes). Candidates are then
    verified: dropped only when the fraction of all b*r hashes that agree reaches the threshold.
    Shingles are `shingle` consecutive code tokens (identifiers, numbers, punctuation; layout ignored), so exact and whitespace-only copies always collide. Of each
    cluster the record whose id sorts first is kept, whatever the task count."""

    num_buckets: int = BANDS  # LSH bands b (ignored when threshold is given)
    hashes_per_bucket: int = ROWS  # rows r per band (ignored when threshold is given)
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
        self.check_whole_numbers("num_buckets", "hashes_per_bucket", "shingle")

    def check_whole_numbers(self, *fields: str, optional: bool = False) -> None:
        """Each of `fields` is a whole number >= 1 (or None, when `optional`)."""
        for k in fields:
            v = getattr(self, k)
            if (v is not None or not optional) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"dedup.{k}: {v!r} must be a whole number >= 1")

    @property
    def verify_threshold(self) -> float:
        """Candidates are dropped only when their MinHash estimate of Jaccard (the fraction of all
        b*r hashes that agree) reaches this: `threshold`, or the bands' 50% point."""
        return float(self.threshold) if self.threshold is not None else self.band_threshold

    @property
    def band_threshold(self) -> float:
        return round((1 / self.num_buckets) ** (1 / self.hashes_per_bucket), 3)

    def minhash(self):
        """datatrove's `MinhashConfig` for these settings (64-bit hashes)."""
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig

        return MinhashConfig(n_grams=self.shingle, num_buckets=self.num_buckets,
                             hashes_per_bucket=self.hashes_per_bucket, seed=self.seed,
                             hash_config=HashConfig(precision=64))
