"""Diversity report of a synthetic dataset: distinct n-grams, constraints actually used, duplicates.

Collapse is the known failure of synthetic data (the model says the same thing
thousands of times); these numbers make it visible: distinct-n ratios (distinct
n-grams / all n-grams, over the whole set), how evenly the sampled constraints
were spread, the near-duplicate rate, how much of the topic tree the kept records
cover, and how many clusters their embeddings form (one big cluster = collapse).
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


def topic_coverage(metas: list[dict], tree=None) -> dict:
    """Distinct leaves, root topics and seed documents the records used; with the spec's tree
    (`sources.TopicTree`), the fraction of its leaves and root topics covered."""
    leaves: Counter = Counter()
    docs: set = set()
    for m in metas:
        c = m.get("constraints") or {}
        if isinstance(c.get("leaf_path"), list):
            leaves[tuple(map(str, c["leaf_path"]))] += 1
        elif "topic" in c and "subtopic" in c:  # inline topics: (topic, subtopic) is the leaf
            leaves[(str(c["topic"]), str(c["subtopic"]))] += 1
        if "document_id" in c:
            docs.add(str(c["document_id"]))
    out = {"distinct_leaves": len(leaves), "distinct_topics": len({p[0] for p in leaves}),
           "max_records_per_leaf": max(leaves.values(), default=0), "distinct_documents": len(docs)}
    if tree is not None:
        known = set(tree.leaves)
        roots = {p[0] for p in known}
        out.update(tree=tree.path, tree_leaves=len(known), tree_topics=len(roots),
                   leaf_coverage=round(len(known & set(leaves)) / len(known), 4),
                   topic_coverage=round(len(roots & {p[0] for p in leaves}) / len(roots), 4),
                   leaves_not_in_tree=len(set(leaves) - known))
    return out


def embedding_clusters(texts: list[str], encoder: str = "hashing", sample: int = 2000, threshold: float = 0.7,
                       seed: int = 0) -> dict:
    """Agglomerative clusters (average linkage, cosine distance below `threshold`) of the embedded texts,
    on a seeded sample of at most `sample`: the count and the largest cluster's share.

    Sparse n-gram features (the `hashing` encoder) are IDF-weighted over the sample first: every Python
    text shares `def`, `(` and `return`, and without IDF those alone put diverse code in one cluster."""
    import numpy as np

    from phi1.data.features import embed, make_encoder

    picked = texts if len(texts) <= sample else random.Random(seed).sample(texts, sample)
    out = {"encoder": encoder, "sample": len(picked), "threshold": threshold, "clusters": 0, "largest_share": 0.0,
           "sizes": []}
    if not picked:
        return out
    if len(picked) == 1:
        return {**out, "clusters": 1, "largest_share": 1.0, "sizes": [1]}
    from sklearn.cluster import AgglomerativeClustering

    mat, _ = embed(make_encoder(encoder), picked, desc="embed for clusters")
    if hasattr(mat, "toarray"):
        from sklearn.feature_extraction.text import TfidfTransformer

        mat = TfidfTransformer().fit_transform(mat).toarray()
    mat = np.asarray(mat, dtype=np.float64)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat = mat / np.where(norms == 0, 1.0, norms)
    dist = np.clip(1.0 - mat @ mat.T, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    labels = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                     distance_threshold=threshold).fit(dist).labels_
    sizes = sorted(Counter(labels.tolist()).values(), reverse=True)
    return {**out, "clusters": len(sizes), "largest_share": round(sizes[0] / len(picked), 4), "sizes": sizes[:50]}


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
    """Six panels: distinct-n, length histogram, rejection reasons, the first constraint's top values,
    embedding cluster sizes, topic coverage."""
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

    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
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
    _plot_clusters(axes[0, 2], report.get("embedding_clusters"))
    _plot_coverage(axes[1, 2], report.get("topic_coverage"))
    fig.suptitle(f"phi1 synth validate: {report['kind']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _plot_clusters(ax, cl: dict | None) -> None:
    if not cl or not cl.get("sizes"):
        ax.set_title("embedding clusters: (not computed)")
        return
    sizes = cl["sizes"][:30]
    ax.bar(range(1, len(sizes) + 1), [s / cl["sample"] for s in sizes], color="tab:orange")
    ax.set_xlabel("cluster (largest first)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("share of the sample")
    ax.set_title(f"embedding clusters: {cl['clusters']} of {cl['sample']} texts, largest {cl['largest_share']:.0%}")


def _plot_coverage(ax, cov: dict | None) -> None:
    if not cov:
        ax.set_title("topic coverage: (none)")
        return
    if "leaf_coverage" in cov:  # the tree is known: fractions of it, so 20,000 leaves and 9 topics share an axis
        labels = [f"leaves\n{cov['distinct_leaves']}/{cov['tree_leaves']}",
                  f"topics\n{cov['distinct_topics']}/{cov['tree_topics']}"]
        ax.bar(labels, [cov["leaf_coverage"], cov["topic_coverage"]], color="tab:cyan")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of the tree used")
        ax.set_title(f"topic coverage: {cov['leaf_coverage']:.0%} of the tree's leaves")
        return
    counts = {"leaves": cov["distinct_leaves"], "topics": cov["distinct_topics"],
              "documents": cov["distinct_documents"]}
    counts = {k: v for k, v in counts.items() if v}
    if counts:
        ax.bar(list(counts), list(counts.values()), color="tab:cyan")
        ax.set_yscale("log")
    ax.set_title("distinct leaves / topics / seed documents used")
