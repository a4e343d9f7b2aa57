"""The `decontaminate` stage: drop records that overlap a benchmark task (13-gram containment,
sequence confirmation, syntax-tree similarity, optionally embeddings; `phi1.data.decontam`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from phi1.data.decontam import DecontamParams, Decontaminator, hits_per_task
from phi1.data.decontam_steps import DecontaminationFilter
from phi1.data.engine import Block
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, config_of, one_block, run_stage_file
from phi1.errors import ConfigError


@dataclass
class DecontaminateStage(DecontamParams):
    """The decontaminate stage's settings: the benchmarks, and how a text is matched (`DecontamParams`)."""

    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])  # built-in benchmarks to protect (humaneval)
    benchmark_files: list[str] = field(default_factory=list)  # benchmark JSONL files (HumanEval or MBPP format)

    def validate(self) -> None:
        DecontamParams.validate(self)
        for f in self.benchmark_files:
            if not Path(f).is_file():
                raise ConfigError(f"decontaminate.benchmark_files: {f}: benchmark file not found; "
                                  "give the path of a HumanEval- or MBPP-format JSONL file")

    def decontaminator_kwargs(self) -> dict:
        return dict(benchmarks=list(self.benchmarks), benchmark_files=list(self.benchmark_files), **self.params())


def build_decontaminate(ctx: StageContext, cfg: DecontaminateStage) -> list[Block]:
    return one_block(ctx, [DecontaminationFilter(cfg.decontaminator_kwargs(), ctx.rejected_writer())])


def run_decontaminate(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                      cfg: DecontaminateStage | None = None, workers: int = 0, skip_bad_lines: bool = False,
                      rejected: str | None = None, quiet: bool = False, overwrite: bool = False,
                      **options) -> StageReport:
    """Drop records that overlap any benchmark task; the report lists every hit with task and score.
    `workers` tasks each hold their own index. `options` are `DecontaminateStage` fields."""
    cfg = config_of(KIND, cfg, options)
    deco = Decontaminator(**cfg.decontaminator_kwargs())  # a bad benchmark fails here, once
    hits: list[dict] = []
    report, _ = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers,
                               on_reject=lambda rec: hits.append({"id": rec["id"],
                                                                  "hits": rec["meta"].get("contamination", [])}))
    report.details.update(tasks=len(deco.tasks), ngram=deco.ngram, ngram_threshold=deco.ngram_threshold,
                          ast_threshold=deco.ast_threshold, ratio_threshold=deco.ratio_threshold, hits=hits,
                          hits_per_task=hits_per_task(h for rec in hits for h in rec["hits"]))
    return finish_report(report, quiet)


def _print_hits(report: StageReport, args) -> None:
    if not args.quiet:
        for h in report.details["hits"][:20]:
            best = h["hits"][0]
            print(f"  {h['id']}: {best['task_id']} ({best['method']}, score {best['score']})", file=sys.stderr)


KIND = StageKind(
    "decontaminate", DecontaminateStage, build_decontaminate, run_decontaminate,
    help="remove records overlapping benchmark problems (n-gram + AST)",
    inputs=("benchmark_files",), aliases={"benchmarks": ["--benchmark"], "benchmark_files": ["--benchmark-file"],
                                          "use_ast": ["--ast"]},
    report=_print_hits, demo=DemoPlace("filter", "decontaminate against benchmarks"))
