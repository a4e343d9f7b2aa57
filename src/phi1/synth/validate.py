"""`phi1 synth validate`: keep the generated records that are usable, unique and clean.

Order of the filters (each rejection is counted and kept with its reason in
`<out>.rejected.jsonl`; nothing vanishes):
  1. per-kind checks (`checks.py`); exercises are then executed, asserts and all, in
     the eval sandbox (`phi1.eval.sandbox`: separate processes, limits, no network), and a passing
     one is rewritten in the paper's format: `text` = plain Python (signature, docstring, solution),
     the asserts and main block in `meta.tests` (the raw answer in `meta.generated_text`);
  2. decontamination (code kinds) against every configured benchmark (HumanEval by default, MBPP
     or your own through benchmark files): `phi1.data.decontam.Decontaminator`, 13-gram overlap,
     the sequence-ratio confirmation and AST similarity, with the hits per task in the report;
  3. exact and near-duplicate removal with the data pipeline's `MinhashIndex` (the dedup stage's MinHash
     signatures, bands and verification, in memory); the first record of a cluster is kept.
Then a diversity report (JSON + PNG) over what was kept. A record whose id repeats an earlier
line's (two generation jobs of an older phi1 wrote one file at once) is rejected first.

No output (`--out`, `OUT.rejected.jsonl`, the report and its PNG) may be the input file, also
for library callers; the output is locked while the command runs (one writer per output), and
a write that fails (a full or read-only disk) is one error line naming the file, with no
temporary file left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from phi1.data.minhash import DEDUP_THRESHOLD
from phi1.errors import ConfigError, Phi1Error
from phi1.synth.checks import check_exercise, check_story, check_textbook
from phi1.synth.diversity import build_report, embedding_clusters, plot_report_png, topic_coverage
from phi1.synth.spec import KINDS
from phi1.utils.io import atomic_write, read_jsonl
from phi1.utils.progress import progress
from phi1.utils.safety import OutputLock, oserror_line

log = logging.getLogger(__name__)


@dataclass
class ValidateConfig:
    kind: str
    input: str
    out: str
    report: str | None = None  # default: <out>.report.json (+ .png)
    execute: bool = True  # exercises: run their asserts in the sandbox
    timeout: float = 5.0  # seconds per exercise run
    workers: int = 2  # sandbox processes for executing exercises
    dedup_threshold: float = DEDUP_THRESHOLD  # MinHash Jaccard above which texts are near-duplicates
    decontaminate: bool = True
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])  # built in: humaneval
    benchmark_files: list[str] = field(default_factory=list)  # HumanEval- or MBPP-format JSONL files
    keep_truncated: bool = False  # records cut by max_tokens are rejected unless set
    min_words: int = 40  # shortest story / textbook prose kept, in words
    # Diversity report: embedding clusters of a seeded sample of the kept texts (sample 0 = skip), and
    # the topic tree whose coverage is reported (default: the tree of the records' spec, if unchanged).
    encoder: str = "hashing"  # embeddings for the report's clusters: hashing (no model) | minilm | st:DIR | hf:NAME
    cluster_sample: int = 2000  # kept texts (a seeded sample) clustered for the report; 0 = skip
    cluster_threshold: float = 0.7  # cosine distance under which average-linkage merges clusters
    topics_file: str | None = None

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0 < self.dedup_threshold <= 1:
            raise ConfigError(f"dedup_threshold: {self.dedup_threshold} must be in (0, 1]")
        if self.timeout <= 0:
            raise ConfigError(f"timeout: {self.timeout} must be > 0 seconds")
        from phi1.data.features import ENCODER_HELP

        if not (self.encoder in ("hashing", "minilm") or str(self.encoder).startswith(("st:", "hf:", "lm:"))):
            raise ConfigError(f"--encoder: {self.encoder!r} is not one of: {ENCODER_HELP}")
        if not 0 < self.cluster_threshold < 2:
            raise ConfigError(f"--cluster-threshold: {self.cluster_threshold} must be a cosine distance in (0, 2)")
        if self.cluster_sample < 0:
            raise ConfigError(f"--cluster-sample: {self.cluster_sample} must be >= 0 (0 = no clustering)")
        if self.topics_file:
            from phi1.synth.sources import load_tree

            load_tree(self.topics_file)  # a bad tree fails now, not after the checks
        self.write_plan().check()
        if not Path(self.input).is_file():  # before the output is locked (which creates its lock file)
            what = "is a directory; give a JSONL file" if Path(self.input).is_dir() else "file not found"
            raise Phi1Error(f"--input {self.input}: {what}")

    def paths(self) -> dict[str, Path]:
        out = Path(self.out)
        report = Path(self.report) if self.report else out.with_name(out.name + ".report.json")
        return {"out": out, "rejected": out.with_name(out.name + ".rejected.jsonl"), "report": report,
                "png": report.with_suffix(".png")}

    def derived(self) -> dict[str, Path]:
        """The files validate writes that the user did not name, labelled for messages."""
        p = self.paths()
        return {"--out.rejected.jsonl": p["rejected"], **({} if self.report else {"--out.report.json": p["report"]}),
                "the report's PNG": p["png"]}

    def write_plan(self):
        """Every file validate writes, for the one guard (phi1.utils.writes)."""
        from phi1.utils.writes import Write, WritePlan

        named = [Write("--out", Path(self.out))] + ([Write("--report", Path(self.report))] if self.report else [])
        return WritePlan("synth validate", named + [Write(k, v, named=False) for k, v in self.derived().items()],
                         inputs={"--input": self.input}, overwrite_flag=False)


def _write_all(files: list[tuple[Path, object]]) -> None:
    """Write every output to a temp file first, then rename them all into place.

    A write that fails (a full or read-only disk) leaves every output as it was and no
    temp file behind, and raises one Phi1Error naming the file.
    """
    current = files[0][0]
    try:
        with contextlib.ExitStack() as stack:
            handles = []
            for path, content in files:
                current = path
                handles.append(stack.enter_context(atomic_write(path, "wb")))
            for (path, content), fh in zip(files, handles):
                current = path
                if isinstance(content, bytes):
                    fh.write(content)
                else:
                    for rec in content:
                        fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                fh.flush()
    except OSError as exc:  # atomic_write removed the temp files; name the file that could not be written
        raise Phi1Error(oserror_line(OSError(exc.errno, exc.strerror, str(current)))) from None


def validate_file(cfg: ValidateConfig) -> dict:
    """Run the filters over `cfg.input`; write kept, rejected and the report; return the report."""
    cfg.validate()
    with cfg.write_plan(), OutputLock(Path(cfg.out), is_dir=False, what="validate output"):
        return _validate_locked(cfg)


def _validate_locked(cfg: ValidateConfig) -> dict:
    records = list(read_jsonl(cfg.input))
    reasons_of: dict[int, list[str]] = {}
    first_of: dict[str, int] = {}
    for i, rec in enumerate(records):
        rid = rec.get("id")
        if isinstance(rid, str) and rid in first_of:
            meta = rec["meta"] if isinstance(rec.get("meta"), dict) else {}
            meta["validation"] = {}
            rec["meta"] = meta
            reasons_of[i] = [f"duplicate record: id {rid} repeats line {first_of[rid] + 1} of the input "
                             "(two jobs wrote one output at once); the first is kept"]
            continue
        if isinstance(rid, str):
            first_of[rid] = i
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
    for i, rec in enumerate(records):  # the program text is only needed for execution
        rec["meta"]["validation"].pop("code", None)
        split = rec["meta"]["validation"].pop("split", None)
        if split is not None and not reasons_of[i]:
            _exercise_format(rec, split)
    contamination = {}
    if cfg.decontaminate and cfg.kind in ("exercises", "textbooks"):
        contamination = _decontaminate(records, reasons_of, cfg)
    n_checked, n_dups = _near_dedup(records, reasons_of, cfg.dedup_threshold)
    kept, rejected, reasons = [], [], Counter()
    for i, rec in enumerate(records):
        rec["meta"]["validation"]["reasons"] = reasons_of[i]
        if reasons_of[i]:
            rejected.append(rec)
            reasons.update(r.split(":")[0] for r in reasons_of[i])  # counted by category
        else:
            kept.append(rec)
    paths = cfg.paths()
    counts = {"input": len(records), "kept": len(kept), "rejected": len(rejected)}
    extra = {"input": str(cfg.input), "executed": cfg.kind == "exercises" and cfg.execute,
             "adherence": _adherence(cfg.kind, records),
             "decontamination": {"benchmarks": list(cfg.benchmarks), "benchmark_files": list(cfg.benchmark_files),
                                 "hits_per_task": contamination}}
    extra.update(_diversity_extra(cfg, kept))
    report = build_report(cfg.kind, kept, counts, reasons, n_dups / n_checked if n_checked else 0.0, extra=extra)
    _write_all([(paths["out"], kept), (paths["rejected"], rejected), (paths["png"], plot_report_png(report)),
                (paths["report"], (json.dumps(report, indent=2) + "\n").encode("utf-8"))])
    log.info("validate %s: kept %d of %d (%s)", cfg.kind, len(kept), len(records), dict(reasons))
    return report


def _diversity_extra(cfg: ValidateConfig, kept: list[dict]) -> dict:
    """Topic coverage (against the tree when it is known) and the embedding-cluster count of the kept records."""
    from phi1.synth.sources import load_tree
    from phi1.synth.spec import tree_of_records

    metas = [r.get("meta") or {} for r in kept]
    tree = load_tree(cfg.topics_file) if cfg.topics_file else (tree_of_records(metas) if cfg.kind == "textbooks"
                                                                else None)
    out = {"topic_coverage": topic_coverage(metas, tree)}
    if cfg.cluster_sample:
        out["embedding_clusters"] = embedding_clusters([r.get("text") or "" for r in kept], cfg.encoder,
                                                       cfg.cluster_sample, cfg.cluster_threshold)
    return out


def _exercise_format(rec: dict, split: dict) -> None:
    """The paper's CodeExercises record: `text` is plain Python (signature, docstring, solution; no
    fences, no asserts), the tests go to `meta.tests` (run here, never packed), and `meta.prompt` /
    `meta.completion` split the text at the docstring as mined exercises do."""
    meta = rec["meta"]
    meta["generated_text"] = rec.get("text", "")
    rec["text"] = split["text"]
    meta["tests"] = split["tests"]
    for key in ("prompt", "completion"):
        if key in split:
            meta[key] = split[key]
    meta["kind"] = "exercise"


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


def _exercise_job(info: dict) -> str | dict:
    """The sandbox job of one exercise: its solution runs confined and its asserts in the judge, a separate
    process that decides (so code in the solution cannot fake its own pass); unsplit code runs whole."""
    split = info.get("split") or {}
    if split.get("text") and split.get("tests"):
        return {"program": split["text"], "check": split["tests"]}
    return info["code"]


def _execute(records: list[dict], reasons_of: dict[int, list[str]], cfg: ValidateConfig) -> None:
    """Run each parsed exercise (function + its asserts) in the sandbox; failures become reasons."""
    from phi1.eval.sandbox import Sandbox, SandboxConfig, classify

    jobs = [(i, _exercise_job(rec["meta"]["validation"])) for i, rec in enumerate(records) if not reasons_of[i]]
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


def _decontaminate(records: list[dict], reasons_of: dict[int, list[str]], cfg: ValidateConfig) -> dict[str, int]:
    """The data pipeline's decontaminator (n-grams, sequence ratio, syntax) against every configured
    benchmark; returns the hits per benchmark task."""
    from phi1.data.decontam import Decontaminator, describe, hits_per_task

    deco = Decontaminator(list(cfg.benchmarks), list(cfg.benchmark_files))
    found = []
    for i, rec in enumerate(records):
        if reasons_of[i]:  # already rejected: spare the most expensive check
            continue
        hits = deco.check(rec.get("text") or "")
        if hits:
            found += hits
            rec["meta"]["validation"]["contamination"] = [h.to_dict() for h in hits[:3]]
            reasons_of[i].append(f"contaminated: {describe(hits[0])}")
    return hits_per_task(found)


def _near_dedup(records: list[dict], reasons_of: dict[int, list[str]], threshold: float) -> tuple[int, int]:
    """Mark exact and near duplicates among the records still kept; return (checked, duplicates)."""
    from phi1.data.minhash_steps import MinhashIndex

    index = MinhashIndex(threshold=threshold)
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
