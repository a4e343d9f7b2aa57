"""Educational-value labels (the `annotate` stage, `phi1.data.stages.annotate`) (0-5) for a sample of records.

With `endpoint`, an LLM judge scores each sampled record through any
OpenAI-compatible server (the shared `phi1.llm.client.LLMClient`: bounded
concurrency, retries). Every answer is appended to a cache keyed by the hash of
(prompt version, model, text) as soon as it arrives, so a rerun, or a run after
an interruption or an unreachable endpoint, never pays for the same record
twice. Without an endpoint, the transparent rules in `edu_rules` stand in and
say so (`meta.edu_annotator = "rules"`).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from phi1.utils.io import json_loads, JsonlAppender
from phi1.errors import Phi1Error
from phi1.data.edu_rules import rule_score
from phi1.data.records import content_hash
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

SCALES = (5, 10)
_LEVELS_10 = """0 = no educational value (auto-generated, data tables, configuration, boilerplate, broken code)
2 = very little (mostly setup, imports or glue code with no clear concepts)
4 = some value but hard to learn from (depends heavily on outside context, undocumented)
6 = useful: clear code showing a few concepts, but not self-contained or not well explained
8 = good: self-contained, readable, documented code that teaches algorithms or concepts
10 = excellent: like a textbook example - clear, well explained, instructive, self-contained
(odd scores fall between the levels around them)"""
RETRY_MESSAGE = ("I could not find a score in your answer. Reply with only the JSON object "
                 '{{"score": <integer 0-{scale}>, "reason": "<one sentence>"}}.')

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_JSON_RE = re.compile(r"\{[^{}]*\}", re.DOTALL)
_NUM = r"(\d{1,2}(?:\.\d+)?)"
_OUT_OF_RE = re.compile(_NUM + r"\s*(?:/|out\s+of|of)\s*(5|10)\b", re.IGNORECASE)
_SCORE_RE = re.compile(r"(?:score|rating|value|grade)\W{0,12}" + _NUM + r"(?!\.?\d)", re.IGNORECASE)
_LONE_RE = re.compile(r"^\W*" + _NUM + r"\W*$", re.MULTILINE)


def judge_prompt(scale: int = 5) -> str:
    """The judge's prompt on a 0-5 (the paper's) or a 0-10 scale; `{code}` stands for the code."""
    if scale == 5:
        return JUDGE_PROMPT
    head, tail = JUDGE_PROMPT.split("0 = no educational value", 1)
    tail = tail.split("Answer with", 1)[1]
    return (head.replace("from 0 to 5", "from 0 to 10") + _LEVELS_10 + "\n\nAnswer with"
            + tail.replace("<integer 0-5>", "<integer 0-10>"))


def judge_messages(text: str, scale: int = 5) -> list[dict]:
    """The chat messages sent to the judge for one record."""
    code = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "\n# ... (truncated)"
    return [{"role": "user", "content": judge_prompt(scale).replace("{code}", code)}]


def response_schema(scale: int = 5) -> dict:
    """The OpenAI `response_format` asking for {"score": int, "reason": str} (vLLM, SGLang, OpenAI accept it)."""
    return {"type": "json_schema", "json_schema": {"name": "edu_score", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["score", "reason"],
        "properties": {"score": {"type": "integer", "minimum": 0, "maximum": scale}, "reason": {"type": "string"}}}}}


def parse_judgement(answer: str, scale: int = 5) -> tuple[float, str] | None:
    """(score on the paper's 0-5 scale, reason) from a judge's answer, or None when there is none.

    Reasoning (`<think>...</think>`) is dropped first. Then, first match wins: a JSON object with a
    "score"; "N/5", "N/10", "N out of 5|10"; "score: N" (also rating, grade); a lone number on a line.
    An explicit denominator sets the scale; a bare number is read on the scale the prompt asked for
    (`scale`), so a 0-10 answer is halved. A number outside the scale is no score."""
    text = _THINK_RE.sub("", answer or "")

    def on(value: float, denom: int) -> float | None:
        return value * 5.0 / denom if 0 <= value <= denom else None

    for m in _JSON_RE.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            try:
                score = on(float(obj["score"]), scale)
            except (TypeError, ValueError):
                continue
            if score is not None:
                return score, str(obj.get("reason", "")).strip()
    reason = text.strip()[:300]
    m = _OUT_OF_RE.search(text)
    if m and (score := on(float(m.group(1)), int(m.group(2)))) is not None:
        return score, reason
    for rx in (_SCORE_RE, _LONE_RE):
        m = rx.search(text)
        if m and (score := on(float(m.group(1)), scale)) is not None:
            return score, reason
    return None


def cache_key(text: str, model: str, scale: int = 5) -> str:
    version = PROMPT_VERSION if scale == 5 else f"{PROMPT_VERSION}-scale{scale}"
    return content_hash(f"{version}\x00{model}\x00{text}")


def load_cache(path: Path) -> dict[str, dict]:
    cache: dict[str, dict] = {}
    if path.exists():
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    row = json_loads(line)
                    cache[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn tail from a crash; JsonlAppender repairs it on open
    return cache


JUDGE_COUNTS = ("cache_hits", "judge_failed", "judge_unparsable", "judge_retried", "schema_refused")
"""The judge's counters in a stage's stats (`phi1.data.stages.annotate.EduLabels`)."""


def judge_details(counts: dict, cfg) -> dict:
    """The judge's counts, tokens and cost from a stage manifest's counters."""
    out: dict = {k: 0 for k in JUDGE_COUNTS}
    client: dict[str, int] = {}
    for key, n in counts.items():
        tail = key.rsplit("/", 1)[-1]
        if tail in JUDGE_COUNTS:
            out[tail] += n
        elif tail.startswith("client_"):
            client[tail[len("client_"):]] = client.get(tail[len("client_"):], 0) + n
    out["client"] = client
    tin, tout = client.get("prompt_tokens", 0), client.get("completion_tokens", 0)
    out.update(tokens_in=tin, tokens_out=tout)
    labels = sum(n for k, n in counts.items() if k.rsplit("/", 1)[-1].startswith("label_")
                 and k.rsplit("/", 1)[-1] != "label_error")
    paid = max(labels - out["cache_hits"], 0)
    if cfg.price_in_per_1m or cfg.price_out_per_1m:
        cost = tin / 1e6 * cfg.price_in_per_1m + tout / 1e6 * cfg.price_out_per_1m
        out.update(cost_usd=round(cost, 6), cost_per_1000_labels=round(cost / paid * 1000, 6) if paid else None)
    return out


def _rule_label(text: str) -> dict:
    score, reasons, feats = rule_score(text)
    return {"score": score, "reason": "; ".join(reasons), "features": feats}


class _Judge:
    """One annotation run's conversation with the judge: the JSON-schema request while the server takes
    it, one retry of an answer with no score, and the counts."""

    def __init__(self, client, cfg):
        self.client, self.cfg = client, cfg
        self.schema = cfg.response_format in ("auto", "json_schema")
        self.counts = {"judge_retried": 0, "schema_refused": 0}

    def _sampling(self) -> dict:
        c = self.cfg
        out = {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens, **dict(c.sampling or {})}
        if self.schema:
            out["response_format"] = response_schema(c.scale)
        return out

    async def ask(self, messages: list[dict]):
        sampling = self._sampling()
        res = await self.client.chat(messages, **sampling)
        if not res.ok and "response_format" in sampling and self.cfg.response_format == "auto" \
                and (res.error or "").startswith(("http_400", "http_422")):
            # The server refuses response_format (or json_schema): ask as plain chat from now on
            # (requests sent before the first refusal came back are asked again the same way).
            if self.schema:
                self.schema = False
                self.counts["schema_refused"] += 1
            res = await self.client.chat(messages, **self._sampling())
        return res

    async def judge(self, text: str) -> tuple[object, dict | None]:
        """(result, row) for one record; row None when the request failed (it is asked again next run)."""
        messages = judge_messages(text, self.cfg.scale)
        res = await self.ask(messages)
        if not res.ok:
            return res, None
        answers = [res.text]
        parsed = parse_judgement(res.text, self.cfg.scale)
        if parsed is None:  # one retry, with the answer shown back and the format asked for again
            self.counts["judge_retried"] += 1
            again = await self.ask(messages + [{"role": "assistant", "content": res.text},
                                               {"role": "user", "content": RETRY_MESSAGE.format(scale=self.cfg.scale)}])
            if again.ok:
                answers.append(again.text)
                parsed = parse_judgement(again.text, self.cfg.scale)
        return res, {"answer": answers[-1], "answers": answers, "score": parsed[0] if parsed else None,
                     "reason": parsed[1] if parsed else ""}


def _llm_labels(texts, cfg, cache_path, report, quiet):
    """Labels for `texts` from the judge in `cfg` (an `AnnotateStage`), through the cache at `cache_path`."""
    cache = load_cache(cache_path)
    keys = [cache_key(t, cfg.model, cfg.scale) for t in texts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache}.items(), key=lambda kv: kv[1])
    report.details["cache_hits"] = len(texts) - len(todo)
    client = cfg.make_client()
    judge = _Judge(client, cfg)
    failures: list[str] = []

    async def one(key, idx, sink, bar):
        res, row = await judge.judge(texts[idx])
        bar.update(1)
        if row is None:
            failures.append(res.error or "unknown error")
            return
        row = {"key": key, **row, "model": cfg.model}
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
    report.details.update(judge.counts)
    if todo and len(failures) == len(todo):
        raise Phi1Error(
            f"annotate: endpoint {cfg.endpoint} failed for all {len(todo)} requests ({failures[0]}); "
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
