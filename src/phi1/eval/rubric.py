"""Rubrics for LLM-graded evaluation, robust parsing of the grades, and confidence intervals.

Stories are graded as the TinyStories paper graded them (grammar, creativity,
consistency with the beginning), code as phi-1's section 4 did (correctness
and quality of a solution to an unconventional problem). Every score is an
integer from 1 to 10. The judge is asked to reason first and end with one JSON
object; `parse_scores` also accepts "Grammar: 7/10"-style lines, because judges
do not always obey.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rubric:
    task: str
    keys: tuple[str, ...]
    system: str
    template: str  # placeholders {prompt} {completion} {notes}
    lo: int = 1
    hi: int = 10


STORY_RUBRIC = Rubric(
    task="stories",
    keys=("grammar", "creativity", "consistency"),
    system="You are a strict teacher grading short stories written by a student.",
    template=(
        "The student was given the beginning of a story and had to continue it. The beginning is:\n"
        "<beginning>\n{prompt}\n</beginning>\n\nThe student's continuation is:\n<continuation>\n{completion}\n"
        "</continuation>\n\nGrade the continuation only, each criterion as an integer from 1 (very poor) to 10 "
        "(excellent):\n"
        "- grammar: spelling, grammar and punctuation;\n"
        "- creativity: original, engaging events and language rather than repetition;\n"
        "- consistency: stays consistent with the beginning (characters, setting, facts) and the plot makes sense.\n"
        "An empty, cut-off or repetitive continuation scores low on every criterion.\n"
        "First write two or three sentences of assessment. Then, on the last line, write only a JSON object: "
        '{{"grammar": G, "creativity": C, "consistency": S}}'
    ),
)

CODE_RUBRIC = Rubric(
    task="problems",
    keys=("correctness", "quality"),
    system="You are an expert Python reviewer grading a student's solution to a programming problem.",
    template=(
        "The student was given this function signature and docstring and had to write the body:\n"
        "```python\n{prompt}```\n\nThe student's completion (it continues the code above):\n"
        "```python\n{completion}\n```\n\nNotes for the grader on what a correct solution needs: {notes}\n\n"
        "Grade each criterion as an integer from 1 to 10:\n"
        "- correctness: 10 = correct on all inputs the docstring allows, including edge cases; 5 = right idea with "
        "bugs; 1 = wrong, missing or not Python;\n"
        "- quality: readability, sensible names, idiomatic Python and reasonable efficiency.\n"
        "Reason about the code step by step in a few sentences, tracing the docstring example. Then, on the last "
        'line, write only a JSON object: {{"correctness": C, "quality": Q}}'
    ),
)

RUBRICS = {"stories": STORY_RUBRIC, "problems": CODE_RUBRIC}

_JSON_OBJ = re.compile(r"\{[^{}]*\}")


def judge_messages(rubric: Rubric, prompt: str, completion: str, notes: str = "") -> list[dict]:
    """The chat messages asking the judge to grade one completion."""
    body = rubric.template.format(prompt=prompt, completion=completion.strip() or "(empty)",
                                  notes=notes or "use your judgement")
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": body}]


def _valid(v, lo: int, hi: int) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if lo <= x <= hi and math.isfinite(x) else None


def parse_scores(text: str, keys: tuple[str, ...], lo: int = 1, hi: int = 10) -> dict[str, float]:
    """Scores found in a judge's answer; keys missing or out of range are left out.

    Tries, in order: the last JSON object holding any key (also inside code fences),
    then "key: 7", "key = 7/10", "**Key**: 7" lines. Case-insensitive.
    """
    found: dict[str, float] = {}
    for m in reversed(_JSON_OBJ.findall(text)):
        try:
            obj = json.loads(m)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        low = {str(k).lower().strip(): v for k, v in obj.items()}
        hits = {k: _valid(low[k], lo, hi) for k in keys if k in low}
        hits = {k: v for k, v in hits.items() if v is not None}
        if hits:
            found = hits
            break
    for k in keys:
        if k in found:
            continue
        pat = re.compile(rf"\b{re.escape(k)}\b\W{{0,4}}\s*[:=\-]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*{hi})?", re.I)
        matches = pat.findall(text)
        if matches:
            v = _valid(matches[-1], lo, hi)
            if v is not None:
                found[k] = v
    return found


def mean_ci(values: list[float], method: str = "bootstrap", level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> dict:
    """Mean with a confidence interval: percentile bootstrap (seeded) or Student's t."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "method": method}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "ci_low": mean, "ci_high": mean, "method": method}
    alpha = (1 - level) / 2
    if method == "t":
        from scipy.stats import t

        sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
        half = t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    elif method == "bootstrap":
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
        lo, hi = means[int(alpha * n_boot)], means[min(n_boot - 1, int((1 - alpha) * n_boot))]
    else:
        raise ValueError(f"method {method!r}: use bootstrap or t")
    return {"n": n, "mean": round(mean, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4), "method": method}
