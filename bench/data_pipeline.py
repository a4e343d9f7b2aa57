"""Data pipeline throughput on this machine's own Python code (stdlib + site-packages).

    python bench/data_pipeline.py --limit-mb 100 [--baseline-mb 10] [--workers 0] [--out DIR]

Runs collect -> dedup -> annotate (rules) -> classify, score (hashing) ->
filter -> decontaminate -> exercises and prints MB/s per stage. Then
compares the dedup stage with a straightforward datasketch baseline (one
MinHash per document, `.update` per shingle, serial) on the same first
`--baseline-mb` of documents, side by side, with the agreement of the kept sets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PHI1_NO_PROGRESS", "1")


def mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit-mb", type=float, default=100.0, help="MB of source text to collect (0 = all)")
    ap.add_argument("--baseline-mb", type=float, default=10.0, help="MB on which dedup is compared with the baseline")
    ap.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per CPU)")
    ap.add_argument("--out", help="work directory (default: a temp dir)")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args(argv)

    from phi1.data.stages.annotate import run_annotate
    from phi1.data.stages.classify import run_classify
    from phi1.data.stages.score import run_score
    from phi1.data.stages.collect import run_collect
    from phi1.data.stages.decontaminate import run_decontaminate
    from phi1.data.stages.dedup import run_dedup
    from reference_dedup import baseline_dedup_ids
    from phi1.data.stages.filter import run_filter
    from phi1.data.stages.exercises import run_exercises

    work = Path(args.out or tempfile.mkdtemp(prefix="phi1-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    w = args.workers
    rows = []

    def stage(name, fn, inp, *a, **kw):
        t0 = time.perf_counter()
        res = fn(*a, **kw)
        dt = time.perf_counter() - t0
        size = mb(inp) if inp else (res.bytes_in / 1e6)
        rows.append({"stage": name, "mb_in": round(size, 1), "seconds": round(dt, 2), "mb_per_s": round(size / dt, 2)})
        print(f"  {name:<16} {size:8.1f} MB {dt:8.1f} s {size / dt:8.2f} MB/s", file=sys.stderr)
        return res

    print(f"phi1 data bench: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, work dir {work}", file=sys.stderr)
    docs, dd, ann = work / "docs.jsonl", work / "dedup.jsonl", work / "annotated.jsonl"
    stage("collect", run_collect, None, [], docs, python_stdlib=True, site_packages=True,
          limit_bytes=int(args.limit_mb * 1e6), workers=w, quiet=True)
    stage("dedup", run_dedup, docs, docs, dd, workers=w, quiet=True)
    stage("annotate(rules)", run_annotate, dd, dd, ann, sample=2000, annotator="rules", workers=w, quiet=True)
    clf = work / "clf.joblib"
    t0 = time.perf_counter()
    meta = run_classify(ann, clf, n_estimators=100, workers=w, quiet=True)
    rows.append({"stage": "classify", "mb_in": None, "seconds": round(time.perf_counter() - t0, 2),
                 "mb_per_s": None, "held_out": meta["held_out"]})
    print(f"  classify         {meta['n_labelled']} labelled in {time.perf_counter() - t0:.1f} s, "
          f"held-out acc {meta['held_out']['accuracy']}", file=sys.stderr)
    sc, flt, dc, ex = work / "scored.jsonl", work / "filtered.jsonl", work / "clean.jsonl", work / "exercises.jsonl"
    stage("score", run_score, dd, dd, sc, classifier=clf, workers=w, quiet=True)
    stage("filter", run_filter, sc, sc, flt, top_fraction=0.5, quiet=True)
    stage("decontaminate", run_decontaminate, flt, flt, dc, workers=w, quiet=True)
    stage("exercises", run_exercises, dd, dd, ex, workers=w, quiet=True)

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "limit_mb": args.limit_mb, "stages": rows}
    if not args.skip_baseline:
        texts, size = [], 0
        with docs.open() as fh:
            for line in fh:
                t = json.loads(line)["text"]
                texts.append(t)
                size += len(t.encode())
                if size >= args.baseline_mb * 1e6:
                    break
        sub = work / "baseline_in.jsonl"
        sub.write_text("".join(json.dumps({"id": str(i), "text": t, "meta": {}}) + "\n" for i, t in enumerate(texts)))
        t0 = time.perf_counter()
        run_dedup(sub, work / "baseline_ours.jsonl", workers=w, quiet=True)
        ours_s = time.perf_counter() - t0
        ours_kept = {r["id"] for r in map(json.loads, (work / "baseline_ours.jsonl").open())}
        t0 = time.perf_counter()
        base_kept = {str(i) for i in baseline_dedup_ids(texts)}
        base_s = time.perf_counter() - t0
        agree = len(ours_kept & base_kept) / max(1, len(ours_kept | base_kept))
        mbs = size / 1e6
        result["dedup_vs_baseline"] = {
            "mb": round(mbs, 2), "docs": len(texts), "ours_s": round(ours_s, 2), "baseline_s": round(base_s, 2),
            "ours_mb_per_s": round(mbs / ours_s, 2), "baseline_mb_per_s": round(mbs / base_s, 2),
            "speedup": round(base_s / ours_s, 2), "ours_kept": len(ours_kept), "baseline_kept": len(base_kept),
            "kept_set_jaccard": round(agree, 4)}
        d = result["dedup_vs_baseline"]
        print(f"\n  near-dedup on {mbs:.1f} MB ({len(texts)} docs, MinHash 128 perms, threshold 0.85):", file=sys.stderr)
        print(f"    ours (vectorised, {w or os.cpu_count()} workers) {ours_s:7.1f} s {d['ours_mb_per_s']:7.2f} MB/s  kept {len(ours_kept)}", file=sys.stderr)
        print(f"    datasketch baseline (serial)     {base_s:7.1f} s {d['baseline_mb_per_s']:7.2f} MB/s  kept {len(base_kept)}", file=sys.stderr)
        print(f"    speedup {d['speedup']:.1f}x; kept sets agree (Jaccard) {agree:.3f}", file=sys.stderr)
    (work / "bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
