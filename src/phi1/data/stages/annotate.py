"""The `annotate` stage: educational-value labels (0-5) for a fixed-seed sample of records, by an LLM
judge through any OpenAI-compatible server or by the offline rules (`phi1.data.annotate`)."""

from __future__ import annotations

import hashlib
import heapq
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from phi1.data.annotate import (JUDGE_COUNTS, PROMPT_VERSION, SCALES, _llm_labels, _rule_label,
                                judge_details)
from phi1.data.engine import Block, RecordReader, RecordWriter, first_pass
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import (DemoPlace, StageContext, StageKind, commit_block, config_of, one_block,
                                   run_stage_file)
from phi1.errors import ConfigError
from phi1.llm.client import ClientSettings


@dataclass
class AnnotateStage(ClientSettings):
    """The annotate stage's settings: which records the judge labels, and how it is asked; the client's
    (concurrency, timeout, retries, api_key_env, prices per 1M tokens) are `ClientSettings`'."""

    sample: int = 0  # records to label: the N smallest hash(seed, id), any task count (0 = all)
    seed: int = 0  # the sample's seed
    only_sampled: bool = True  # with a sample: write only it (False: every record, the sample labelled)
    annotator: str | None = None  # llm | rules; None: llm with an endpoint, rules for sample 0 without one
    endpoint: str | None = None  # OpenAI-compatible base URL of the LLM judge (comma-separated for several)
    model: str | None = None  # the judge's model name on the endpoint
    scale: int = 5  # the judge scores 0-5 (the paper's), or 0-10 (halved into the label)
    temperature: float = 0.0  # the judge's sampling temperature
    top_p: float | None = None  # the judge's nucleus sampling (None: the server's)
    max_tokens: int = 512  # the judge's answer; reasoning models need thousands
    sampling: dict = field(default_factory=dict)  # more request fields, e.g. {seed: 0, reasoning_effort: low}
    response_format: str = "auto"  # auto: ask for a JSON schema while the server accepts it | json_schema | none
    cache: str | None = None  # the judge's cache file (default: judge-cache.jsonl in the stage directory)

    def validate(self) -> None:
        if isinstance(self.sample, bool) or not isinstance(self.sample, int) or self.sample < 0:
            raise ConfigError(f"annotate.sample: {self.sample!r} must be a whole number >= 0")
        if self.annotator not in (None, "llm", "rules"):
            raise ConfigError(f"annotate.annotator: {self.annotator!r} must be llm or rules")
        if self.annotator == "rules" and self.endpoint:
            raise ConfigError("annotate: annotator rules and an endpoint; drop one (rules label offline, "
                              "the endpoint's judge labels with an LLM)")
        if not self.endpoint and (self.annotator == "llm" or (self.annotator is None and self.sample > 0)):
            raise ConfigError(
                f"annotate: sample {self.sample} to label but no endpoint for the LLM judge; give endpoint and model "
                "(CLI: --endpoint URL --model NAME; phi1 demo: --endpoint), or set annotator: rules "
                "(CLI: --annotator rules) to label with the offline rules")
        if self.endpoint and not self.model:
            raise ConfigError("annotate.model: required with endpoint; give the name the server serves")
        if self.scale not in SCALES:
            raise ConfigError(f"annotate.scale: {self.scale!r} must be 5 or 10")
        if self.response_format not in ("auto", "json_schema", "none"):
            raise ConfigError(f"annotate.response_format: {self.response_format!r} must be auto, json_schema or none")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"annotate.max_tokens: {self.max_tokens!r} must be a whole number >= 1")
        if self.endpoint and self.api_key_env and not os.environ.get(self.api_key_env):
            raise ConfigError(f"annotate.api_key_env: environment variable {self.api_key_env} is not set; export it "
                              "with the judge's key, or set api_key_env to null for a server without one "
                              "(demo recipes: data.annotate.api_key_env)")


def sample_key(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


class SampleCandidates(PipelineStep):
    """Keeps this task's `k` records with the smallest keys hash(seed, id) (a streaming bottom-k
    reservoir: one heap of k, any input size). The global k smallest are among the union of every
    task's k smallest, so the sample is the same whatever the task count."""

    name = "sample (bottom-k)"

    def __init__(self, k: int, seed: int, writer):
        super().__init__()
        self.k, self.seed, self.writer = k, seed, writer

    def run(self, data, rank: int = 0, world_size: int = 1):
        heap: list[tuple[int, str, Document]] = []
        for doc in data:
            self.stat_update("seen")
            key = sample_key(self.seed, doc.id)
            item = (-key, doc.id, doc)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        with self.writer as w:
            for neg, _, doc in sorted(heap, reverse=True):
                doc.metadata["sample_key"] = -neg
                w.write(doc, rank)
        if False:  # a generator step with no output
            yield


class SmallestKeys(PipelineStep):
    """One task: the k records with the smallest `meta.sample_key`, in key order."""

    name = "sample (merge)"

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def run(self, data, rank: int = 0, world_size: int = 1):
        best = heapq.nsmallest(self.k, data, key=lambda d: (d.metadata["sample_key"], d.id))
        for doc in best:
            doc.metadata.pop("sample_key", None)
            yield doc


class EduLabels(PipelineStep):
    """Educational-value labels 0-5: the LLM judge through an OpenAI-compatible endpoint (cached by
    prompt version + model + text, so a rerun never pays twice), or the transparent rules offline."""

    name = "edu labels"

    def __init__(self, cfg: AnnotateStage, cache: str, batch: int = 256):
        super().__init__()
        self.cfg, self.cache, self.batch = cfg, cache, batch

    def _label(self, texts: list[str]) -> list[dict]:
        if not self.cfg.endpoint:
            return [_rule_label(t) for t in texts]
        rep = StageReport("annotate")
        labels = _llm_labels(texts, self.cfg, Path(self.cache), rep, True)
        for key in JUDGE_COUNTS:
            self.stat_update(key, value=int(rep.details.get(key, 0)))
        for key, v in rep.details.get("client", {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                self.stat_update(f"client_{key}", value=v)
        return labels

    def run(self, data, rank: int = 0, world_size: int = 1):
        annotator = f"llm:{self.cfg.model}" if self.cfg.endpoint else "rules"
        for batch in batched(data, self.batch):
            for doc, lab in zip(batch, self._label([d.text for d in batch])):
                if "score" in lab:
                    doc.metadata.update(edu_label=lab["score"], edu_reason=lab["reason"], edu_annotator=annotator)
                    if "features" in lab:
                        doc.metadata["edu_features"] = lab["features"]
                    self.stat_update(f"label_{int(lab['score'])}")
                else:
                    doc.metadata.update(edu_error=lab["error"], edu_annotator=annotator)
                    self.stat_update("label_error")
            yield from batch


class JoinLabels(PipelineStep):
    """Every record, with the labels of the sampled ones (read from the label block's shard, by id)."""

    name = "join labels"

    def __init__(self, labelled: Path):
        super().__init__()
        self.labelled = Path(labelled)

    def run(self, data, rank: int = 0, world_size: int = 1):
        labels: dict[str, dict] = {}
        for doc in RecordReader(self.labelled).run(None, 0, 1):
            labels[doc.id] = {k: v for k, v in doc.metadata.items() if k.startswith("edu_")}
        for doc in data:
            lab = labels.get(doc.id)
            if lab is not None:
                doc.metadata.update(lab)
                self.stat_update("labelled")
            yield doc


def build_annotate(ctx: StageContext, cfg: AnnotateStage) -> list[Block]:
    labels = EduLabels(cfg, cache=cfg.cache or str(ctx.dir / "judge-cache.jsonl"))
    if not cfg.sample:
        return one_block(ctx, [labels], "label")
    cand, labelled = ctx.work / "sample", ctx.work / "labelled"
    sample = Block("sample", [first_pass(ctx.reader()) if not cfg.only_sampled else ctx.reader(),
                              SampleCandidates(cfg.sample, cfg.seed, RecordWriter(cand))], tasks=ctx.tasks)
    if cfg.only_sampled:
        return [sample, Block("label", [RecordReader(cand), SmallestKeys(cfg.sample), labels, ctx.writer()], tasks=1),
                commit_block(ctx)]
    return [sample, Block("label", [RecordReader(cand), SmallestKeys(cfg.sample), labels, RecordWriter(labelled)],
                          tasks=1),
            Block("join", [ctx.reader(), JoinLabels(labelled), ctx.writer()], tasks=ctx.tasks), commit_block(ctx)]


def run_annotate(input_path: str | os.PathLike, output_path: str | os.PathLike, *, cfg: AnnotateStage | None = None,
                 workers: int = 0, skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
                 overwrite: bool = False, **options) -> StageReport:
    """Add `meta.edu_label` (0-5), `edu_reason`, `edu_annotator` to a fixed-seed sample of records (all
    when no sample), through the same blocks as an `annotate` stage of `phi1 data run`. `options` are
    `AnnotateStage` fields (None keeps the default); the judge's cache defaults to `OUTPUT.cache.jsonl`.
    The report gives the label histogram, the judge's counts (cache hits, retried, unparsable, failed),
    the tokens in and out, and with prices the cost and the cost per 1,000 labels."""
    if isinstance(options.get("endpoint"), list):
        options["endpoint"] = ",".join(options["endpoint"])
    cfg = config_of(KIND, cfg, options)
    cfg = replace(cfg, cache=str(cfg.cache) if cfg.cache else str(output_path) + ".cache.jsonl")
    hist: dict[str, int] = {}

    def count(rec: dict) -> None:
        lab = rec["meta"].get("edu_label")
        if isinstance(lab, (int, float)):
            hist[str(int(lab))] = hist.get(str(int(lab)), 0) + 1

    report, m = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers,
                               on_keep=count)
    annotator = f"llm:{cfg.model}" if cfg.endpoint else "rules"
    labelled = sum(hist.values())
    if cfg.endpoint:
        report.details.update(judge_details(m["counts"], cfg))
        for reason in ("judge_unparsable", "judge_failed"):
            report.failed[reason] += report.details.get(reason, 0)
    report.attempted = labelled + sum(report.failed.values())  # the sampled records, labelled or not
    report.details.update(annotator=annotator, sampled=report.attempted, labelled=labelled,
                          prompt_version=PROMPT_VERSION, scale=cfg.scale, label_histogram=dict(sorted(hist.items())))
    if not quiet and annotator == "rules":
        print("annotate: the rule-based annotator labelled the records (meta.edu_annotator = 'rules')", file=sys.stderr)
    return finish_report(report, quiet)


KIND = StageKind(
    "annotate", AnnotateStage, build_annotate, run_annotate,
    help="educational-value labels 0-5 (LLM judge, or rules offline)",
    derived=(".report.json", ".cache.jsonl"), outputs=("cache",),
    aliases={"price_in_per_1m": ["--price-in"], "price_out_per_1m": ["--price-out"]},
    demo=DemoPlace("dedup", "label educational value"))
