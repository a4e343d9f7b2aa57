"""`phi1 data annotate`: educational-value labels (0-5) for a sample of records.

With `endpoint`, an LLM judge scores each sampled record through any
OpenAI-compatible server (the shared `phi1.synth.client.LLMClient`: bounded
concurrency, retries). Every answer is appended to a cache keyed by the hash of
(prompt version, model, text) as soon as it arrives, so a rerun, or a run after
an interruption or an unreachable endpoint, never pays for the same record
twice. Without an endpoint, the transparent rules in `edu_rules` stand in and
say so (`meta.edu_annotator = "rules"`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from phi1.errors import Phi1Error
from phi1.data.edu_rules import rule_score
from phi1.data.records import StageReport, content_hash, finish_report
from phi1.utils.io import JsonlAppender
from phi1.utils.progress import progress

PROMPT_VERSION = "edu-v1"
MAX_CHARS = 6000  # the judge sees the head of long files; cost grows with length, signal does not

JUDGE_PROMPT = """You are reviewing source code for a programming textbook.
Determine its educational value for a student whose goal is to learn basic coding concepts.

Rate the code on a scale from 0 to 5:
0 = no educational value (auto-generated, data tables, configuration, boilerplate, broken code)
1 = very little (mostly setup, imports or glue code with no clear concepts)
2 = some value but hard to learn from (depends heavily on outside context, undocumented)
3 = useful: clear code showing a few concepts, but not self-contained or not well explained
4 = good: self-contained, readable, documented code that teaches algorithms or concepts
5 = excellent: like a textbook example - clear, well explained, instructive, self-contained

Answer with a JSON object on one line: {"score": <integer 0-5>, "reason": "<one sentence>"}

Code:
```python
{code}
```"""

_JSON_RE = re.compile(r"\{[^{}]*\}", re.DOTALL)
_SCORE_RE = re.compile(r"(?:score|rating|value)\W{0,6}([0-5](?:\.\d+)?)\b", re.IGNORECASE)
_LONE_RE = re.compile(r"^\W*([0-5])(?:\s*/\s*5)?\W*$", re.MULTILINE)


def judge_messages(text: str) -> list[dict]:
    """The chat messages sent to the judge for one record."""
    code = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "\n# ... (truncated)"
    return [{"role": "user", "content": JUDGE_PROMPT.replace("{code}", code)}]


def parse_judgement(answer: str) -> tuple[float, str] | None:
    """(score, reason) from a judge's answer: JSON first, then 'score: N', then a lone digit; None if nonsense."""
    for m in _JSON_RE.finditer(answer or ""):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            try:
                score = float(obj["score"])
            except (TypeError, ValueError):
                continue
            if 0 <= score <= 5:
                return score, str(obj.get("reason", "")).strip()
    m = _SCORE_RE.search(answer or "") or _LONE_RE.search(answer or "")
    if m:
        score = float(m.group(1))
        return score, (answer or "").strip()[:300]
    return None


def cache_key(text: str, model: str) -> str:
    return content_hash(f"{PROMPT_VERSION}\x00{model}\x00{text}")


def load_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if path.exists():
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    cache[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn tail from a crash; JsonlAppender repairs it on open
    return cache


def run_annotate(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    endpoint: str | list[str] | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    sample: int | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    cache: str | os.PathLike | None = None,
    only_sampled: bool | None = None,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Add `meta.edu_label` (0-5), `edu_reason`, `edu_annotator` to a fixed-seed sample of records (all
    when no sample), through the same blocks as an `annotate` stage of `phi1 data run`
    (`phi1.data.steps.AnnotateStage`); the judge's cache defaults to `OUTPUT.cache.jsonl`."""
    from phi1.data.pipeline import run_stage_file

    if isinstance(endpoint, list):
        endpoint = ",".join(endpoint)
    opts = {k: v for k, v in dict(endpoint=endpoint, model=model, api_key_env=api_key_env, sample=sample, seed=seed,
                                  concurrency=concurrency, timeout=timeout, max_attempts=max_attempts,
                                  only_sampled=only_sampled).items() if v is not None}
    opts["cache"] = str(cache) if cache else str(output_path) + ".cache.jsonl"
    hist: dict[str, int] = {}

    def count(rec: dict) -> None:
        lab = rec["meta"].get("edu_label")
        if isinstance(lab, (int, float)):
            hist[str(int(lab))] = hist.get(str(int(lab)), 0) + 1

    report, m = run_stage_file("annotate", opts, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers,
                               on_keep=count)
    annotator = f"llm:{model}" if endpoint else "rules"
    report.details.update(annotator=annotator, sampled=sum(hist.values()), prompt_version=PROMPT_VERSION,
                          label_histogram=dict(sorted(hist.items())))
    if endpoint:
        from phi1.data.steps import JUDGE_COUNTS

        client: dict[str, int] = {}
        for key, n in m["counts"].items():
            tail = key.rsplit("/", 1)[-1]
            if tail in JUDGE_COUNTS:
                report.details[tail] = report.details.get(tail, 0) + n
            elif tail.startswith("client_"):
                client[tail[len("client_"):]] = client.get(tail[len("client_"):], 0) + n
        report.details["client"] = client
    if not quiet and annotator == "rules":
        print("annotate: no --endpoint given, so the rule-based annotator labelled the records "
              "(meta.edu_annotator = 'rules')", file=sys.stderr)
    return finish_report(report, quiet)


def _rule_label(text: str) -> dict:
    score, reasons, feats = rule_score(text)
    return {"score": score, "reason": "; ".join(reasons), "features": feats}


def _llm_labels(texts, endpoint, model, api_key_env, concurrency, timeout, max_attempts, cache_path, report, quiet):
    from phi1.synth.client import LLMClient

    cache = load_cache(cache_path)
    keys = [cache_key(t, model) for t in texts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.items(), key=lambda kv: kv[1])
    report.details["cache_hits"] = len(texts) - len(todo)
    client = LLMClient(endpoint, model, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                       max_attempts=max_attempts)
    failures: list[str] = []

    async def one(key, idx, sink, bar):
        res = await client.chat(judge_messages(texts[idx]), temperature=0.0, max_tokens=200)
        bar.update(1)
        if not res.ok:
            failures.append(res.error or "unknown error")
            return
        parsed = parse_judgement(res.text)
        row = {"key": key, "answer": res.text, "score": parsed[0] if parsed else None,
               "reason": parsed[1] if parsed else "", "model": model}
        cache[key] = row
        sink.write(row)  # cached the moment it arrives: an interruption loses nothing paid for

    async def all_():
        with JsonlAppender(cache_path, sync=False) as sink:
            bar = progress(total=len(todo), desc="annotate (judge)", unit="rec")
            try:
                await asyncio.gather(*(one(k, i, sink, bar) for k, i in todo))
            finally:
                bar.close()
                await client.aclose()

    if todo:
        asyncio.run(all_())
    report.details["client"] = client.stats.as_dict()
    if todo and len(failures) == len(todo):
        raise Phi1Error(
            f"annotate: endpoint {endpoint} failed for all {len(todo)} requests ({failures[0]}); "
            f"{len(cache)} cached judgements kept in {cache_path}; check the URL/server and rerun"
        )
    labels = []
    for key in keys:
        row = cache.get(key)
        if row is None:
            labels.append({"error": "request failed", "kind": "failed"})
            report.details["judge_failed"] = report.details.get("judge_failed", 0) + 1
        elif row.get("score") is None:
            labels.append({"error": f"unparsable judge answer: {row.get('answer', '')[:120]!r}", "kind": "unparsable"})
            report.details["judge_unparsable"] = report.details.get("judge_unparsable", 0) + 1
        else:
            labels.append({"score": row["score"], "reason": row["reason"]})
    return labels
