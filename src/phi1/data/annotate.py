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
import random
import re
import sys
from pathlib import Path

from phi1.errors import ConfigError, Phi1Error
from phi1.data.edu_rules import rule_score
from phi1.data.parallel import parallel_map
from phi1.data.records import RecordSink, check_stage_outputs, StageReport, content_hash, finish_report, iter_records
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


def _choose_sample(n_records: int, sample: int | None, seed: int) -> set[int] | None:
    if sample is None or sample <= 0 or sample >= n_records:
        return None
    return set(random.Random(seed).sample(range(n_records), sample))


def run_annotate(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    endpoint: str | list[str] | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    concurrency: int = 8,
    timeout: float = 60.0,
    max_attempts: int = 6,
    cache: str | os.PathLike | None = None,
    only_sampled: bool = False,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Add `meta.edu_label` (0-5), `edu_reason`, `edu_annotator` to a sample of records (all when no sample)."""
    if endpoint and not model:
        raise ConfigError("annotate.model: required with --endpoint; pass --model NAME (the name the server serves)")
    report = StageReport("annotate", input=str(input_path))
    check_stage_outputs(report.stage, input_path, output_path, rejected, overwrite=overwrite)
    # The sample needs the record count first; annotation is run on samples, so holding them is fine.
    records = list(iter_records(input_path, report, skip_bad_lines=skip_bad_lines))
    chosen = _choose_sample(len(records), sample, seed)
    picked = [i for i in range(len(records)) if chosen is None or i in chosen]
    if endpoint:
        labels = _llm_labels([records[i]["text"] for i in picked], endpoint, model, api_key_env, concurrency,
                             timeout, max_attempts, Path(cache) if cache else Path(str(output_path) + ".cache.jsonl"),
                             report, quiet)
        annotator = f"llm:{model}"
    else:
        texts = (records[i]["text"] for i in picked)
        labels = [lab for _, lab in progress(parallel_map(_rule_label, texts, workers=workers), total=len(picked),
                                             desc="annotate (rules)", unit="rec")]
        annotator = "rules"
    report.details.update(annotator=annotator, sampled=len(picked), prompt_version=PROMPT_VERSION)
    by_index = dict(zip(picked, labels))
    hist: dict[str, int] = {}
    with RecordSink(output_path, report, rejected, overwrite=overwrite) as sink:
        for i, rec in enumerate(records):
            lab = by_index.get(i)
            if lab is not None and "score" in lab:
                rec["meta"].update(edu_label=lab["score"], edu_reason=lab["reason"], edu_annotator=annotator)
                if "features" in lab:
                    rec["meta"]["edu_features"] = lab["features"]
                hist[str(int(lab["score"]))] = hist.get(str(int(lab["score"])), 0) + 1
            elif lab is not None:
                rec["meta"].update(edu_error=lab["error"], edu_annotator=annotator)
            if only_sampled and (lab is None or "score" not in lab):
                sink.reject(rec, "not_sampled" if lab is None else "judge_" + lab["kind"])
                continue
            sink.keep(rec)
    report.details["label_histogram"] = dict(sorted(hist.items()))
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
