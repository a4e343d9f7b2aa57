"""Decontamination precision and recall on a labelled set (`phi1.data.decontam_eval`), one run.

    python bench/decontam_precision.py [--stdlib 400] [--show 10]

Contaminated: every HumanEval task verbatim, renamed, reformatted, with its docstring paraphrased,
and embedded in a larger file. Clean: short stdlib functions plus typed, documented functions that
solve other problems in HumanEval's layout. Prints recall per variant, the false-positive rate, and
the first misses and false positives with the matched span.
"""

from __future__ import annotations

import argparse
import time

from phi1.data.benchmarks import load_benchmarks
from phi1.data.decontam import Decontaminator
from phi1.data.decontam_eval import clean_set, contaminated_set, measure, stdlib_functions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stdlib", type=int, default=400, help="stdlib functions in the clean set")
    ap.add_argument("--show", type=int, default=10, help="misses and false positives to print")
    args = ap.parse_args()
    tasks = load_benchmarks(["humaneval"])
    clean = clean_set(args.stdlib)
    cont = contaminated_set(tasks, stdlib_functions(60))
    deco = Decontaminator(["humaneval"])
    t = time.perf_counter()
    m = measure(deco, cont, clean)
    dt = time.perf_counter() - t
    print(f"{m['contaminated']} contaminated, {m['clean']} clean; checked in {dt:.1f}s")
    print(f"recall {m['recall']:.4f}  false-positive rate {m['false_positive_rate']:.4f}  precision {m['precision']:.4f}")
    for v, r in m["recall_by_variant"].items():
        print(f"  recall {v:12} {r:.4f}")
    for tid, variant in m["missed"][: args.show]:
        print(f"  missed {tid} ({variant})")
    for variant, first, hit in m["false_positives"][: args.show]:
        print(f"  false positive ({variant}) {first[:60]!r}: {hit.task_id} {hit.method} {hit.score:.3f} "
              f"{getattr(hit, 'span', '')[:80]!r}")


if __name__ == "__main__":
    main()
