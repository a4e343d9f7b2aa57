"""The `dedup` stage: exact and near duplicates by MinHash LSH over code-token shingles, on
datatrove's signature and bucket steps (`phi1.data.minhash_steps`); of each group of duplicates
the record whose id sorts first is kept, whatever the task count."""

from __future__ import annotations

import os
from dataclasses import dataclass

from phi1.data.engine import Block
from phi1.data.minhash import MinhashParams
from phi1.data.minhash_steps import dedup_blocks
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, commit_block, config_of, run_stage_file


@dataclass
class DedupStage(MinhashParams):
    """The dedup stage's settings: `MinhashParams` (bands, rows, shingle, seed, threshold), and how
    its global blocks scale (neither changes what is kept)."""

    tasks_per_band: int | None = None  # bucket tasks per band, each a hash range (none: tasks // bands, at least 1)
    cluster_memory_mb: int = 1024  # the clustering task's working memory; past it candidates spill to disk

    def validate(self) -> None:
        super().validate()
        self.check_whole_numbers("tasks_per_band", "cluster_memory_mb", optional=True)


def build_dedup(ctx: StageContext, cfg: DedupStage) -> list[Block]:
    return [*dedup_blocks(ctx.input, ctx.work, ctx.writer(), ctx.rejected_writer("dedup"), ctx.tasks, cfg,
                          ctx.skip_bad_lines, ctx.bad_lines, cfg.tasks_per_band, cfg.cluster_memory_mb),
            commit_block(ctx)]


def run_dedup(input_path: str | os.PathLike, output_path: str | os.PathLike, *, cfg: DedupStage | None = None,
              workers: int = 0, skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
              overwrite: bool = False, **options) -> StageReport:
    """Drop exact and near duplicates; each dropped record names the one kept (`meta.duplicate_of`).
    `options` are `DedupStage` fields (None keeps the default)."""
    cfg = config_of(KIND, cfg, options)
    examples: list[dict] = []

    def note(rec: dict) -> None:
        if len(examples) < 50:
            m = rec["meta"]
            examples.append({"id": rec["id"], "duplicate_of": m.get("duplicate_of"), "similarity": m.get("similarity", 1.0)})

    report, _ = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers, on_reject=note)
    report.details.update(threshold=cfg.verify_threshold, bands=cfg.num_buckets, rows=cfg.hashes_per_bucket,
                          shingle=cfg.shingle, examples=examples)
    return finish_report(report, quiet)


KIND = StageKind(
    "dedup", DedupStage, build_dedup, run_dedup,
    help="drop exact and near duplicates (MinHash + LSH on datatrove)",
    demo=DemoPlace("exact-dedup", "near duplicates (datatrove MinHash)"))
