"""`phi1 data filter`: keep the records the classifier scored best, through the same blocks as a
`filter` stage of `phi1 data run` (`phi1.data.steps.FilterStage`)."""

from __future__ import annotations

import os

from phi1.data.records import StageReport, finish_report


def run_filter(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    min_score: float | None = None,
    top_fraction: float | None = None,
    field: str | None = None,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Keep records with `meta.<field>` >= min_score, or the best `top_fraction` of them (ties kept)."""
    from phi1.data.pipeline import run_stage_file
    from phi1.data.steps import FilterStage

    opts = {k: v for k, v in dict(min_score=min_score, top_fraction=top_fraction, field=field).items() if v is not None}
    report, m = run_stage_file("filter", opts, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers)
    cfg = FilterStage(**opts)
    report.details.update(field=cfg.field, min_score=min_score, top_fraction=top_fraction,
                          cutoff=(m.get("cutoff.json") or {}).get("cutoff", min_score))
    return finish_report(report, quiet)
