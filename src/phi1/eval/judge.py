"""`phi1 eval judge`: the model under test completes prompts, an LLM judge grades the completions.

Tasks: `stories` (TinyStories-style beginnings, graded for grammar, creativity,
consistency) and `problems` (about twenty unconventional coding problems in the
spirit of phi-1's section 4, graded for correctness and quality); the rubrics are
in `rubric.py`. Completions come from `phi1.model.load_for_inference` +
`phi1.infer.generate.generate` (greedy by default); grading goes through the
same `phi1.llm.LLMClient` as synthetic data. Graded items are appended to
`<out>/judged.jsonl`, so a rerun only grades what is missing, and the summary
reports each criterion's mean with 95% confidence intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phi1.utils.io import atomic_write_json, atomic_write_text, json_loads, JsonlAppender, read_jsonl
from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import ClientSettings, LLMClient
from phi1.eval.rubric import RUBRICS, judge_messages, mean_ci, parse_scores
from phi1.utils.cliio import declare_io
from phi1.utils.safety import OutputLock, claim_output_dir

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_ITEMS = {"stories": "story_beginnings.jsonl", "problems": "judge_problems.jsonl"}
# Where a completion of a code prompt ends, as in HumanEval-style evaluation.
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#")


@dataclass
class JudgeConfig(ClientSettings):
    """One LLM-judged eval; the judge client's fields (concurrency, timeout, retries, api_key_env) are
    `ClientSettings`'."""

    model_dir: str
    task: str
    judge_endpoint: str
    judge_model: str
    out: str | None = None  # output folder (None: runs/judge/MODEL-TASK)
    n: int | None = None  # grade only the first N prompts
    prompts: str | None = None  # JSONL with id, prompt (and notes) instead of the shipped set
    max_new_tokens: int | None = None  # completion length (None: 200 for stories, 320 for problems)
    temperature: float = 0.0  # the model's sampling temperature (0 = greedy)
    seed: int = 0  # the sampling and bootstrap seed
    batch_size: int = 8  # prompts the model completes together
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16
    judge_max_tokens: int = 500  # the judge's answer length

    @property
    def endpoint(self) -> str:  # what ClientSettings.make_client reads
        return self.judge_endpoint

    @property
    def model(self) -> str:
        return self.judge_model

    def validate(self) -> None:
        if self.task not in RUBRICS:
            raise ConfigError(f"task: {self.task!r} is not one of {', '.join(RUBRICS)}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n: {self.n} must be >= 1")
        if not Path(self.model_dir).is_dir():
            raise Phi1Error(f"--model-dir {self.model_dir}: not a directory; pass a model directory (config.json, model.safetensors)")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "judge" / f"{Path(self.model_dir).name}-{self.task}"


def load_items(task: str, path: str | None = None, n: int | None = None) -> list[dict]:
    """The prompts to complete: the shipped set for the task or a user JSONL (id, prompt[, notes])."""
    if path:
        items = list(read_jsonl(path))
        where = path
    else:
        ref = RESOURCES / DEFAULT_ITEMS[task]
        items = [json_loads(line) for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = str(ref)
    for i, it in enumerate(items):
        if not isinstance(it.get("prompt"), str) or not it["prompt"].strip():
            raise Phi1Error(f"{where}: item {i + 1} has no 'prompt' string; each line needs id and prompt")
        it.setdefault("id", f"item/{i}")
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise Phi1Error(f"{where}: duplicate ids; each item needs a unique id")
    return items[:n] if n else items


def model_generate_fn(cfg: JudgeConfig) -> Callable[[list[str]], list[tuple[str, str]]]:
    """Completions from the model directory: (text, finish_reason) per prompt."""
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference

    model, tok = load_for_inference(cfg.model_dir, device=cfg.device, dtype=cfg.dtype)
    max_new = cfg.max_new_tokens or (200 if cfg.task == "stories" else 320)
    stops = CODE_STOPS if cfg.task == "problems" else ()

    def fn(prompts: list[str]) -> list[tuple[str, str]]:
        outs = generate(model, tok, prompts, max_new_tokens=max_new, temperature=cfg.temperature,
                        stop=list(stops), seed=cfg.seed, batch_size=cfg.batch_size)
        return [(c.text, c.finish_reason) for c in outs]

    return fn


def run_judge(cfg: JudgeConfig, generate_fn=None, client: LLMClient | None = None) -> dict:
    """Generate, grade, aggregate; resumable through `<out>/judged.jsonl`. Returns the summary."""
    cfg.validate()
    rubric = RUBRICS[cfg.task]
    items = load_items(cfg.task, cfg.prompts, cfg.n)
    out = cfg.out_dir
    claim_output_dir(out, "eval judge")  # new, empty or an earlier judge run's (resumed)
    with OutputLock(out, is_dir=True, what="judge output directory"):
        return _run_judge_locked(cfg, out, rubric, items, generate_fn, client)


def _run_judge_locked(cfg: JudgeConfig, out: Path, rubric, items: list[dict], generate_fn, client) -> dict:
    judged_path = out / "judged.jsonl"
    done = {}
    if judged_path.exists():
        JsonlAppender(judged_path).close()  # cut a torn tail
        done = {r["id"]: r for r in read_jsonl(judged_path) if r.get("judge_model") == cfg.judge_model}
    todo = [it for it in items if it["id"] not in done]
    failures = []
    if todo:
        gen = generate_fn or model_generate_fn(cfg)
        completions = gen([it["prompt"] for it in todo])
        client = client or cfg.make_client()
        msgs = [judge_messages(rubric, it["prompt"], text, it.get("notes", "")) for it, (text, _) in zip(todo, completions)]
        results = client.run_chat_many(msgs, temperature=0.0, max_tokens=cfg.judge_max_tokens)
        with JsonlAppender(judged_path) as fh:
            for it, (text, finish), res in zip(todo, completions, results):
                if not res.ok:  # not written: the next run asks again
                    failures.append({"id": it["id"], "error": res.error})
                    continue
                scores = parse_scores(res.text, rubric.keys, rubric.lo, rubric.hi)
                rec = {"id": it["id"], "prompt": it["prompt"], "completion": text, "finish_reason": finish,
                       "judge_model": cfg.judge_model, "judge_text": res.text, "scores": scores,
                       "parsed": sorted(scores) == sorted(rubric.keys), "usage": res.usage}
                fh.write(rec)
                done[it["id"]] = rec
    records = [done[it["id"]] for it in items if it["id"] in done]
    summary = summarize(cfg, rubric.keys, records, failures)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_summary(summary))
    unparsed = sum(1 for r in records if not r.get("parsed"))
    if items and not any(r.get("parsed") for r in records):  # nothing graded: a failure, not a score of nothing
        if failures and not records:
            why = f"every request to the judge failed ({failures[0]['error']}); check --judge-endpoint and rerun"
        elif unparsed and not failures:
            why = (f"no answer of the judge had all of the rubric's scores ({unparsed} unparsable); check the judge "
                   f"model (answers in {out / 'judged.jsonl'})")
        else:
            why = f"{len(failures)} requests failed and {unparsed} answers were unparsable"
        raise Phi1Error(f"eval judge: none of the {len(items)} items was graded: {why}")
    return summary


def summarize(cfg: JudgeConfig, keys: tuple[str, ...], records: list[dict], failures: list[dict]) -> dict:
    scores = {}
    for k in keys:
        vals = [r["scores"][k] for r in records if k in r["scores"]]
        scores[k] = {"bootstrap": mean_ci(vals, "bootstrap", seed=cfg.seed), "t": mean_ci(vals, "t")}
    overall = [sum(r["scores"][k] for k in keys) / len(keys) for r in records if r.get("parsed")]
    scores["overall"] = {"bootstrap": mean_ci(overall, "bootstrap", seed=cfg.seed), "t": mean_ci(overall, "t")}
    return {
        "task": cfg.task, "model_dir": str(cfg.model_dir), "judge_model": cfg.judge_model,
        "items": len(records) + len(failures), "graded": len(records),
        "parse_failures": sum(1 for r in records if not r.get("parsed")),
        "judge_failures": len(failures), "failed_ids": [f["id"] for f in failures],
        "scores": scores, "scale": "1-10", "ci_level": 0.95,
    }


def format_summary(s: dict) -> str:
    lines = [f"# LLM-judged eval: {s['task']}", "",
             f"model `{s['model_dir']}`, judge `{s['judge_model']}`; graded {s['graded']} of {s['items']} "
             f"(parse failures {s['parse_failures']}, judge failures {s['judge_failures']})", "",
             "| criterion | n | mean | 95% CI (bootstrap) | 95% CI (t) |", "|---|---|---|---|---|"]
    for k, v in s["scores"].items():
        b, t = v["bootstrap"], v["t"]
        if b["n"] == 0:
            lines.append(f"| {k} | 0 | - | - | - |")
            continue
        lines.append(f"| {k} | {b['n']} | {b['mean']:.2f} | [{b['ci_low']:.2f}, {b['ci_high']:.2f}] | "
                     f"[{t['ci_low']:.2f}, {t['ci_high']:.2f}] |")
    return "\n".join(lines) + "\n"


def _cmd(args) -> int:
    from phi1.utils.config import fields_from_args

    cfg = JudgeConfig(**fields_from_args(JudgeConfig, args))
    summary = run_judge(cfg)
    print(format_summary(summary), end="")
    print(f"details: {cfg.out_dir / 'judged.jsonl'}")
    if summary["judge_failures"]:
        print(f"phi1: {summary['judge_failures']} judge requests failed; rerun the same command to grade them")
        return 1
    return 0


def register_eval(sub) -> None:
    from phi1.utils.config import add_config_flags

    p = sub.add_parser("judge", help="LLM-graded eval: the model completes stories or coding problems, a judge grades them")
    p.add_argument("--model-dir", required=True, help="model under test (HF-format directory)")
    p.add_argument("--task", choices=tuple(RUBRICS), required=True)
    p.add_argument("--judge-endpoint", required=True, help="OpenAI-compatible base URL of the judge")
    p.add_argument("--judge-model", required=True, help="judge model name")
    add_config_flags(p, JudgeConfig, skip=("model_dir", "task", "judge_endpoint", "judge_model"))
    declare_io(p, inputs=("model_dir", "prompts"), out_dirs=("out",))
    p.set_defaults(func=_cmd)
