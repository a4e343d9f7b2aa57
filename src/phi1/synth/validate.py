"""`phi1 synth validate`: keep the generated records that are usable, unique and clean.

Order of the filters (each rejection is counted and kept with its reason in
`<out>.rejected.jsonl`; nothing vanishes):
  1. per-kind checks (`checks.py`); exercises are then executed, asserts and all, in
     the eval sandbox (`phi1.eval.sandbox`: separate processes, limits, no network);
  2. decontamination against HumanEval (code kinds): `phi1.data.decontam.Decontaminator`,
     13-gram overlap plus AST similarity, as phi-1 did;
  3. exact and near-duplicate removal with the data pipeline's `DuplicateIndex` (MinHash
     signatures in a datasketch LSH index); the first record of a cluster is kept.
Then a diversity report (JSON + PNG) over what was kept.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from phi1.errors import ConfigError, Phi1Error
from phi1.synth.checks import check_exercise, check_story, check_textbook
from phi1.synth.diversity import build_report, plot_report
from phi1.synth.spec import KINDS
from phi1.utils.io import atomic_write_json, read_jsonl, write_jsonl
from phi1.utils.progress import progress

log = logging.getLogger(__name__)


@dataclass
class ValidateConfig:
    kind: str
    input: str
    out: str
    report: str | None = None  # default: <out>.report.json (+ .png)
    execute: bool = True  # exercises: run their asserts in the sandbox
    timeout: float = 5.0  # seconds per exercise run
    workers: int = 2  # sandbox processes
    dedup_threshold: float = 0.85
    decontaminate: bool = True
    keep_truncated: bool = False  # records cut by max_tokens are rejected unless set
    min_words: int = 40  # stories and textbook prose

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 < self.dedup_threshold <= 1:
            raise ConfigError(f"dedup_threshold: {self.dedup_threshold} must be in (0, 1]")
        if self.timeout <= 0:
            raise ConfigError(f"timeout: {self.timeout} must be > 0 seconds")
        if Path(self.input).resolve() == Path(self.out).resolve():
            raise Phi1Error(f"--out {self.out}: same file as --input; write the validated records elsewhere")


def validate_file(cfg: ValidateConfig) -> dict:
    """Run the filters over `cfg.input`; write kept, rejected and the report; return the report."""
    cfg.validate()
    records = list(read_jsonl(cfg.input))
    reasons_of: dict[int, list[str]] = {}
    for i, rec in enumerate(records):
        meta = rec.setdefault("meta", {})
        cons = meta.get("constraints") or {}
        text = rec.get("text") or ""
        if cfg.kind == "exercises":
            reasons, info = check_exercise(text, cons)
        elif cfg.kind == "textbooks":
            reasons, info = check_textbook(text, cfg.min_words)
        else:
            reasons, info = check_story(text, cons, cfg.min_words)
        if meta.get("finish_reason") == "length" and not cfg.keep_truncated:
            reasons.append("truncated: finish_reason=length")
        meta["validation"] = info
        reasons_of[i] = reasons
    if cfg.kind == "exercises" and cfg.execute:
        _execute(records, reasons_of, cfg)
    for rec in records:  # the program text is only needed for execution
        rec["meta"]["validation"].pop("code", None)
    if cfg.decontaminate and cfg.kind in ("exercises", "textbooks"):
        _decontaminate(records, reasons_of)
    n_checked, n_dups = _near_dedup(records, reasons_of, cfg.dedup_threshold)
    kept, rejected, reasons = [], [], Counter()
    for i, rec in enumerate(records):
        rec["meta"]["validation"]["reasons"] = reasons_of[i]
        if reasons_of[i]:
            rejected.append(rec)
            reasons.update(r.split(":")[0] for r in reasons_of[i])  # counted by category
        else:
            kept.append(rec)
    out = Path(cfg.out)
    write_jsonl(out, kept)
    write_jsonl(out.with_name(out.name + ".rejected.jsonl"), rejected)
    counts = {"input": len(records), "kept": len(kept), "rejected": len(rejected)}
    extra = {"input": str(cfg.input), "executed": cfg.kind == "exercises" and cfg.execute,
             "adherence": _adherence(cfg.kind, records)}
    report = build_report(cfg.kind, kept, counts, reasons, n_dups / n_checked if n_checked else 0.0, extra=extra)
    report_path = Path(cfg.report) if cfg.report else out.with_name(out.name + ".report.json")
    plot_report(report, report_path.with_suffix(".png"))
    atomic_write_json(report_path, report)
    log.info("validate %s: kept %d of %d (%s)", cfg.kind, len(kept), len(records), dict(reasons))
    return report


def _adherence(kind: str, records: list[dict]) -> dict:
    """How often the generated text did what its prompt asked, over all input records."""
    n = len(records) or 1
    vals = [r["meta"]["validation"] for r in records]
    if kind == "stories":
        return {f"{pos}_used": round(sum(bool(v.get("words_used", {}).get(pos)) for v in vals) / n, 4)
                for pos in ("noun", "verb", "adjective")}
    if kind == "exercises":
        named = [v.get("function") for v in vals]
        return {"requested_function_written": round(sum(f is not None for f in named) / n, 4),
                "distinct_function_names": len({f for f in named if f})}
    return {"has_code": round(sum(v.get("n_code_blocks", 0) > 0 for v in vals) / n, 4),
            "interleaved": round(sum(v.get("switches", 0) >= 2 for v in vals) / n, 4)}


def _execute(records: list[dict], reasons_of: dict[int, list[str]], cfg: ValidateConfig) -> None:
    """Run each parsed exercise (function + its asserts) in the sandbox; failures become reasons."""
    from phi1.eval.sandbox import Sandbox, SandboxConfig, classify

    jobs = [(i, rec["meta"]["validation"]["code"]) for i, rec in enumerate(records) if not reasons_of[i]]
    if not jobs:
        return
    with Sandbox(SandboxConfig(workers=cfg.workers, timeout=cfg.timeout)) as sandbox:
        bar = progress(total=len(jobs), desc="execute exercises", unit="ex")
        for res in sandbox.run(jobs, timeout=cfg.timeout):
            kind, detail = classify(res)
            records[res["id"]]["meta"]["validation"]["execution"] = kind
            if kind != "passed":
                reasons_of[res["id"]].append(f"execution {kind}: {detail[:200]}")
            bar.update(1)
        bar.close()


def _decontaminate(records: list[dict], reasons_of: dict[int, list[str]]) -> None:
    from phi1.data.decontam import Decontaminator

    deco = Decontaminator(["humaneval"])
    for i, rec in enumerate(records):
        if reasons_of[i]:  # already rejected: spare the most expensive check
            continue
        hits = deco.check(rec.get("text") or "")
        if hits:
            rec["meta"]["validation"]["contamination"] = [h.to_dict() for h in hits[:3]]
            reasons_of[i].append(f"contaminated: overlaps {hits[0].task_id} ({hits[0].method})")


def _near_dedup(records: list[dict], reasons_of: dict[int, list[str]], threshold: float) -> tuple[int, int]:
    """Mark exact and near duplicates among the records still kept; return (checked, duplicates)."""
    from phi1.data.dedup import DuplicateIndex

    index = DuplicateIndex(threshold=threshold)
    checked = dups = 0
    for i, rec in enumerate(records):
        if reasons_of[i]:
            continue
        checked += 1
        hit = index.add_text(rec.get("id") or str(i), rec.get("text") or "")
        if hit is None:
            continue
        reason, of, sim = hit
        dups += 1
        if reason == "exact_duplicate":
            reasons_of[i].append(f"exact duplicate: of {of}")
        else:
            reasons_of[i].append(f"near-duplicate: of {of} (jaccard {sim:.2f})")
            rec["meta"]["validation"]["near_duplicate_of"] = of
    return checked, dups
