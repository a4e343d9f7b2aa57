"""`phi1 compare`: the same prompts through two checkpoints, side by side (phi-1 section 3).

Three prompt sets, each completed greedily by both models:
- `judge`: phi1's unconventional coding problems (resources/judge_problems.jsonl); those whose
  docstring has examples are tested by running the examples (doctest) in the sandbox;
- `humaneval`: the first N HumanEval tasks, with their tests;
- `library`: tasks that need a library (heapq, fractions, difflib, numpy, ...), with tests
  (resources/library_prompts.jsonl); `--exercises` counts how many exercise records mention
  each library, to show which the finetuning data never contained.
Programs run in phi1's sandbox (phi1.eval.sandbox); with `--judge-endpoint`, phi1's LLM judge
(`phi1 eval judge`'s `run_judge`, rubric `problems`) grades every completion as well.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phi1.utils.io import atomic_write_json, atomic_write_text, json_loads, read_jsonl, write_jsonl
from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import ANY_MODEL
from phi1.utils.safety import OutputLock, claim_output_dir

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SETS = ("judge", "humaneval", "library")
SIDES = ("base", "tuned")

_DOCTEST = '''

import doctest as _phi1_doctest
_phi1_runner = _phi1_doctest.DocTestRunner(verbose=False)
for _phi1_t in _phi1_doctest.DocTestFinder(recurse=False).find({name}, "{name}", module=False, globs=dict(globals())):
    _phi1_runner.run(_phi1_t, out=lambda _s: None)
assert _phi1_runner.tries > 0, "no docstring example ran"
assert _phi1_runner.failures == 0, f"{{_phi1_runner.failures}} of {{_phi1_runner.tries}} docstring examples failed"
'''


@dataclass
class Item:
    id: str
    set: str
    prompt: str
    program: Callable[[str], str | dict] | None = None   # completion -> sandbox job; None: no tests
    notes: str = ""
    library: str | None = None


@dataclass
class CompareConfig:
    base: str
    tuned: str
    out: str
    humaneval: int = 20  # the first N HumanEval tasks (0 = none)
    limit: int | None = None  # at most N prompts of each set
    max_new_tokens: int = 256  # tokens per greedy completion at most
    batch_size: int = 8  # prompts completed together
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16
    workers: int = 2  # sandbox executors
    timeout: float = 3.0  # seconds per test program
    judge_endpoint: str | None = None  # OpenAI-compatible URL of an LLM judge (optional)
    judge_model: str = ANY_MODEL  # the judge's model name
    api_key_env: str | None = None  # environment variable with the judge's key
    judge_concurrency: int = 8
    exercises: str | None = None  # exercises JSONL: count the records that mention each library
    overwrite: bool = False

    def validate(self) -> "CompareConfig":
        for flag, d in (("--base", self.base), ("--tuned", self.tuned)):
            p = Path(d)
            if not p.is_dir() or not (p / "config.json").is_file():
                what = "not found" if not p.exists() else "is not a model directory (no config.json)"
                raise Phi1Error(f"{flag} {d}: {what}; pass an HF-format model directory")
        if self.humaneval < 0:
            raise ConfigError(f"--humaneval {self.humaneval}: use an integer >= 0 (0 = no HumanEval prompts)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: use an integer >= 1")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("--max-new-tokens and --batch-size must be >= 1")
        if self.exercises is not None and not Path(self.exercises).is_file():
            raise Phi1Error(f"--exercises {self.exercises}: file not found; give the exercises JSONL")
        from phi1.eval.sandbox import SandboxConfig

        try:  # the sandbox's settings, checked now rather than after both models have generated
            SandboxConfig(workers=self.workers, timeout=self.timeout).validate()
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("sandbox.workers", "--workers").replace("sandbox.timeout", "--timeout")) \
                from None
        return self


def _entry_point(prompt: str) -> str | None:
    m = re.search(r"^def\s+(\w+)\s*\(", prompt, re.M)
    return m.group(1) if m else None


def _doctest_program(prompt: str) -> Callable[[str], str] | None:
    name = _entry_point(prompt)
    if name is None or ">>>" not in prompt:
        return None
    return lambda completion: prompt + completion + _DOCTEST.format(name=name)


def _jsonl(path: Path) -> list[dict]:
    return [json_loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_items(cfg: CompareConfig) -> list[Item]:
    """The prompt sets, in a fixed order (judge, humaneval, library)."""
    items: list[Item] = []
    judge = [Item(r["id"], "judge", r["prompt"], _doctest_program(r["prompt"]), r.get("notes", ""))
             for r in _jsonl(RESOURCES / "judge_problems.jsonl")]
    items += judge[: cfg.limit]
    if cfg.humaneval:
        from phi1.eval.problems import load_humaneval

        probs = list(load_humaneval().values())[: min(cfg.humaneval, cfg.limit or cfg.humaneval)]
        items += [Item(p.task_id, "humaneval", p.prompt, p.job) for p in probs]
    lib = [Item(r["id"], "library", r["prompt"], (lambda c, r=r: r["prompt"] + c + "\n" + r["test"]),
                r.get("notes", ""), r["library"]) for r in _jsonl(RESOURCES / "library_prompts.jsonl")]
    items += lib[: cfg.limit]
    return items


def complete(model_dir: str, items: list[Item], cfg: CompareConfig) -> list[dict]:
    """Greedy completions of every item by one model, cut at HumanEval's stop sequences."""
    from phi1.eval.problems import HUMANEVAL_STOP
    from phi1.infer.textstream import truncate_at_stop
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference
    from phi1.model.create import check_tokenizer_fits

    check_tokenizer_fits(model_dir)
    model, tok = load_for_inference(model_dir, device=cfg.device, dtype=cfg.dtype)
    ctx = model.config.max_position_embeddings
    fits = [len(tok.encode(it.prompt)) < ctx for it in items]
    todo = [it.prompt for it, ok in zip(items, fits) if ok]
    outs = iter(generate(model, tok, todo, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                         stop=HUMANEVAL_STOP, batch_size=cfg.batch_size) if todo else [])
    res = []
    for ok in fits:
        if not ok:
            res.append({"completion": "", "finish_reason": "prompt_too_long"})
            continue
        c = next(outs)
        res.append({"completion": truncate_at_stop(c.text, HUMANEVAL_STOP)[0], "finish_reason": c.finish_reason})
    del model
    gc.collect()
    return res


def execute(items: list[Item], results: dict[str, list[dict]], cfg: CompareConfig) -> None:
    """Run the tests of every item with tests, for both sides, in one sandbox; fills passed/outcome."""
    from phi1.eval.sandbox import Sandbox, SandboxConfig, classify

    jobs = [(f"{side}:{i}", it.program(results[side][i]["completion"]))
            for side in SIDES for i, it in enumerate(items) if it.program is not None]
    for side in SIDES:
        for r in results[side]:
            r.update(passed=None, outcome="no tests")
    if not jobs:
        return
    with Sandbox(SandboxConfig(workers=cfg.workers, timeout=cfg.timeout)) as box:
        for res in box.run(jobs):
            side, i = res["id"].split(":")
            i = int(i)
            kind, text = classify(res)
            results[side][i].update(passed=kind == "passed", outcome=kind, result=text[:300])


def judge(items: list[Item], results: dict[str, list[dict]], cfg: CompareConfig, out: Path) -> dict:
    """Grade both sides with phi1's LLM judge (`run_judge`, rubric `problems`); returns its summaries."""
    from phi1.eval.judge import JudgeConfig, run_judge

    jdir = out / "judge"
    jdir.mkdir(exist_ok=True)
    prompts = jdir / "prompts.jsonl"
    write_jsonl(prompts, ({"id": it.id, "prompt": it.prompt, "notes": it.notes} for it in items))
    summaries = {}
    for side, model_dir in zip(SIDES, (cfg.base, cfg.tuned)):
        by_prompt = {it.prompt: r["completion"] for it, r in zip(items, results[side])}
        sdir = jdir / side
        _drop_stale_grades(sdir / "judged.jsonl", {it.id: r["completion"] for it, r in zip(items, results[side])})
        jc = JudgeConfig(model_dir=model_dir, task="problems", judge_endpoint=cfg.judge_endpoint,
                         judge_model=cfg.judge_model, out=str(sdir), prompts=str(prompts),
                         api_key_env=cfg.api_key_env, concurrency=cfg.judge_concurrency)
        summaries[side] = run_judge(jc, generate_fn=lambda ps, m=by_prompt: [(m[p], "stop") for p in ps])
        graded = {r["id"]: r for r in read_jsonl(sdir / "judged.jsonl")} if (sdir / "judged.jsonl").exists() else {}
        for it, r in zip(items, results[side]):
            g = graded.get(it.id)
            if g and g.get("parsed"):
                r["judge"] = g["scores"]
    return summaries


def _drop_stale_grades(path: Path, completions: dict[str, str]) -> None:
    """The judge resumes from judged.jsonl; grades of other completions (another model) must not count."""
    if not path.exists():
        return
    stale = any(completions.get(r.get("id")) != r.get("completion") for r in read_jsonl(path, strict=False))
    if stale:
        path.unlink()


def library_mentions(exercises: str, items: list[Item]) -> dict[str, int]:
    """How many exercise records mention each library (import or attribute use), streamed."""
    libs = sorted({it.library for it in items if it.library})
    roots = {lib: lib.split(".")[0] for lib in libs}
    pats = {lib: re.compile(rf"\b(?:import\s+{re.escape(r)}\b|from\s+{re.escape(r)}\b|{re.escape(r)}\.)")
            for lib, r in roots.items()}
    counts = {lib: 0 for lib in libs}
    for rec in read_jsonl(exercises):
        text = "\n".join(str(rec.get(k, "")) for k in ("text", "prompt", "completion"))
        for lib, pat in pats.items():
            if pat.search(text):
                counts[lib] += 1
    return counts


def summarize(items: list[Item], results: dict[str, list[dict]]) -> dict:
    out = {}
    for s in SETS:
        idx = [i for i, it in enumerate(items) if it.set == s]
        if not idx:
            continue
        row = {"prompts": len(idx)}
        for side in SIDES:
            rs = [results[side][i] for i in idx]
            tested = [r for r in rs if r["passed"] is not None]
            graded = [sum(r["judge"].values()) / len(r["judge"]) for r in rs if r.get("judge")]
            row[side] = {"tested": len(tested), "passed": sum(1 for r in tested if r["passed"]),
                         "judged": len(graded), "judge_mean": sum(graded) / len(graded) if graded else None}
        out[s] = row
    return out


def run_compare(cfg: CompareConfig, completer=complete) -> dict:
    """Complete, test and (optionally) judge; writes compare.json, compare.md and compare.html in `cfg.out`."""
    from phi1.inspect.compare_page import compare_html, compare_markdown

    cfg.validate()
    items = load_items(cfg)
    out = claim_output_dir(cfg.out, "compare", overwrite=cfg.overwrite)
    with OutputLock(out, is_dir=True, what="compare output directory"):
        results = {side: completer(d, items, cfg) for side, d in zip(SIDES, (cfg.base, cfg.tuned))}
        execute(items, results, cfg)
        judged = judge(items, results, cfg, out) if cfg.judge_endpoint else {}
        mentions = library_mentions(cfg.exercises, items) if cfg.exercises else None
        report = {
            "base": str(cfg.base), "tuned": str(cfg.tuned),
            "settings": {"greedy": True, "max_new_tokens": cfg.max_new_tokens, "humaneval": cfg.humaneval,
                         "limit": cfg.limit, "judge_model": cfg.judge_model if cfg.judge_endpoint else None},
            "summary": summarize(items, results),
            "judge_failures": {s: v.get("judge_failures", 0) for s, v in judged.items()},
            "exercise_mentions": mentions,
            "items": [{"id": it.id, "set": it.set, "library": it.library, "prompt": it.prompt,
                       "tested": it.program is not None, **{side: results[side][i] for side in SIDES}}
                      for i, it in enumerate(items)],
        }
        atomic_write_json(out / "compare.json", report)
        atomic_write_text(out / "compare.md", compare_markdown(report))
        atomic_write_text(out / "compare.html", compare_html(report))
    return report
