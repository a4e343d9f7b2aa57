"""`phi1 data dedup`: exact and near duplicates on one machine, through the same MinHash blocks as a
`dedup` stage of `phi1 data run` (`phi1.data.steps.DedupStage`, where the defaults and the method live:
code-token shingles, datatrove's signatures and buckets, candidates verified on all hashes, of each
group the record whose id sorts first kept)."""

from __future__ import annotations

import os

from phi1.data.records import StageReport, finish_report, given


def run_dedup(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    threshold: float | None = None,
    max_hashes: int | None = None,
    shingle: int | None = None,
    seed: int | None = None,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Drop exact and near duplicates; each dropped record names the one kept (`meta.duplicate_of`)."""
    from phi1.data.pipeline import run_stage_file
    from phi1.data.steps import DedupStage

    opts = given(threshold=threshold, max_hashes=max_hashes, shingle=shingle, seed=seed)
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
