"""`phi1 data filter`: keep the records the classifier scored best."""

from __future__ import annotations

import os

import numpy as np

from phi1.errors import ConfigError
from phi1.data.records import RecordSink, check_stage_outputs, StageReport, finish_report, iter_records


def run_filter(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    min_score: float | None = None,
    top_fraction: float | None = None,
    field: str = "edu_score",
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Keep records with `meta.<field>` >= min_score, or the best `top_fraction` of them (ties kept)."""
    if (min_score is None) == (top_fraction is None):
        raise ConfigError("filter: give exactly one of --min-score S or --top-fraction F")
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise ConfigError(f"filter.top_fraction: {top_fraction} must be in (0, 1]")
    report = StageReport("filter", input=str(input_path))
    check_stage_outputs(report.stage, input_path, output_path, rejected, overwrite=overwrite)
    cut = min_score
    if top_fraction is not None:
        # Two passes keep memory at one float per record instead of the whole corpus.
        scores = [s for rec in iter_records(input_path, StageReport("scan"), skip_bad_lines=True)
                  if isinstance(s := rec["meta"].get(field), (int, float))]
        cut = float(np.quantile(scores, 1.0 - top_fraction, method="higher")) if scores else float("inf")
    report.details.update(field=field, min_score=min_score, top_fraction=top_fraction, cutoff=cut)
    with RecordSink(output_path, report, rejected, overwrite=overwrite) as sink:
        for rec in iter_records(input_path, report, skip_bad_lines=skip_bad_lines):
            s = rec["meta"].get(field)
            if not isinstance(s, (int, float)):
                sink.reject(rec, f"no_{field}")
            elif s >= cut:
                sink.keep(rec)
            else:
                sink.reject(rec, "below_cutoff", **{field: s})
    return finish_report(report, quiet)
