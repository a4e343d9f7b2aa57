"""Diversity report of a synthetic dataset: distinct n-grams, constraints actually used, duplicates.

Collapse is the known failure of synthetic data (the model says the same thing
thousands of times); these numbers make it visible: distinct-n ratios (distinct
n-grams / all n-grams, over the whole set), how evenly the sampled constraints
were spread, and the near-duplicate rate.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

_TOKEN = re.compile(r"\w+|[^\w\s]")
DISTINCT_SAMPLE = 20000  # distinct-n keeps every n-gram in memory; measure it on a seeded sample

# Constraint fields worth a distribution, per kind (lists are counted item by item).
FIELDS = {
    "stories": ("noun", "verb", "adjective", "features"),
    "exercises": ("function_name", "difficulty", "concepts", "topic"),
    "textbooks": ("topic", "subtopic", "concepts", "audience", "style", "seed_words"),
}


def distinct_n(texts: list[str], ns=(1, 2, 3, 4)) -> dict[str, float]:
    """distinct-n over the corpus: unique n-grams / total n-grams (Li et al., 2016)."""
    out = {}
    token_lists = [_TOKEN.findall(t.lower()) for t in texts]
    for n in ns:
        seen: set = set()
        total = 0
        for toks in token_lists:
            grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
            total += len(grams)
            seen.update(grams)
        out[f"distinct_{n}"] = round(len(seen) / total, 4) if total else 0.0
    return out


def constraint_distributions(kind: str, metas: list[dict], top: int = 15) -> dict:
    """Per constraint field: number of distinct values, entropy ratio, and the most common values."""
    import math

    out = {}
    for name in FIELDS.get(kind, ()):
        c: Counter = Counter()
        for m in metas:
            v = (m.get("constraints") or {}).get(name)
            if isinstance(v, list):
                c.update(str(x) for x in v)
            elif v is not None:
                c[str(v)] += 1
        total = sum(c.values())
        if not total:
            continue
        ent = -sum(v / total * math.log(v / total) for v in c.values())
        out[name] = {
            "distinct": len(c),
            "total": total,
            # 1.0 = perfectly even spread over the values that occurred
            "evenness": round(ent / math.log(len(c)), 4) if len(c) > 1 else 1.0,
            "top": c.most_common(top),
        }
    return out


def build_report(kind: str, kept: list[dict], counts: dict, reasons: Counter, near_dup_rate: float,
                 extra: dict | None = None) -> dict:
    texts = [r.get("text", "") for r in kept]
    lengths = [len(_TOKEN.findall(t)) for t in texts]
    sample = texts if len(texts) <= DISTINCT_SAMPLE else random.Random(0).sample(texts, DISTINCT_SAMPLE)
    metas = [r.get("meta") or {} for r in kept]
    report = {
        "kind": kind,
        "counts": counts,
        "rejection_reasons": dict(reasons.most_common()),
        "near_duplicate_rate": round(near_dup_rate, 4),
        "distinct_n": distinct_n(sample),
        "distinct_n_sample": len(sample),
        "length_tokens": {
            "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
            "histogram": _histogram(lengths),
        },
        "constraints": constraint_distributions(kind, metas),
        "models": dict(Counter(m.get("model", "?") for m in metas)),
    }
    if extra:
        report.update(extra)
    return report


def _histogram(values: list[int], bins: int = 30) -> dict:
    import numpy as np

    counts, edges = np.histogram(values or [0], bins=bins)
    return {"edges": [round(float(e), 3) for e in edges], "counts": counts.tolist()}


def plot_report(report: dict, path: str | Path) -> None:
    """Four panels: distinct-n, length histogram, rejection reasons, the first constraint's top values."""
    from phi1.utils.io import atomic_write

    png = plot_report_png(report)
    with atomic_write(path, "wb") as fh:
        fh.write(png)


def plot_report_png(report: dict) -> bytes:
    """The figure of `plot_report` as PNG bytes (so a caller can write it with its other outputs)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    dn = report["distinct_n"]
    axes[0, 0].bar(list(dn), list(dn.values()), color="tab:blue")
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].set_title("distinct-n (unique / total n-grams)")
    hist = report["length_tokens"]["histogram"]
    edges = hist["edges"]
    axes[0, 1].bar(edges[:-1], hist["counts"], width=[b - a for a, b in zip(edges, edges[1:])], align="edge",
                   color="tab:green")
    axes[0, 1].set_title(f"length in tokens (kept={report['counts'].get('kept', 0)})")
    reasons = report["rejection_reasons"] or {"(none)": 0}
    axes[1, 0].barh(list(reasons)[:12], list(reasons.values())[:12], color="tab:red")
    axes[1, 0].set_title(f"rejections (near-duplicate rate {report['near_duplicate_rate']:.1%})")
    cons = report["constraints"]
    if cons:
        name, d = next(iter(cons.items()))
        labels = [str(k)[:28] for k, _ in d["top"]]
        axes[1, 1].barh(labels[::-1], [v for _, v in d["top"]][::-1], color="tab:purple")
        axes[1, 1].set_title(f"{name}: {d['distinct']} distinct, evenness {d['evenness']:.2f}")
    fig.suptitle(f"phi1 synth validate: {report['kind']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
