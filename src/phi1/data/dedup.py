"""`phi1 data dedup`: exact and near duplicates on one machine, through the same MinHash blocks as a
`dedup` stage of `phi1 data run` (`phi1.data.steps.DedupStage`, where the defaults and the method live:
code-token shingles, datatrove's signatures and buckets, candidates verified on all hashes, of each
group the record whose id sorts first kept)."""

from __future__ import annotations

import os

from phi1.data.records import StageReport, finish_report, given

DEDUP_THRESHOLD = 0.85
"""The near-duplicate Jaccard threshold of the in-memory index (`steps.MinhashIndex`, synthetic data
validation); the corpus dedup stage's default is its bands' 50% point (9 x 14, about 0.855).
Defined once, here: a light module, so CLIs import it without datatrove."""


def run_dedup(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    **options,
) -> StageReport:
    """Drop exact and near duplicates; each dropped record names the one kept (`meta.duplicate_of`).
    `options` are `DedupStage` fields (None keeps the default)."""
    from phi1.data.pipeline import run_stage_file
    from phi1.data.steps import DedupStage

    opts = given(**options)
    examples: list[dict] = []

    def note(rec: dict) -> None:
        if len(examples) < 50:
            m = rec["meta"]
            examples.append({"id": rec["id"], "duplicate_of": m.get("duplicate_of"), "similarity": m.get("similarity", 1.0)})

    report, _ = run_stage_file("dedup", opts, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers, on_reject=note)
    cfg = DedupStage(**opts)
    cfg.validate()
    report.details.update(threshold=cfg.verify_threshold, bands=cfg.num_buckets, rows=cfg.hashes_per_bucket,
                          shingle=cfg.shingle, examples=examples)
    return finish_report(report, quiet)
