"""`phi1 data filter`: keep the records the classifier scored best, through the same blocks as a
`filter` stage of `phi1 data run` (`phi1.data.steps.FilterStage`)."""

from __future__ import annotations

import os

from phi1.data.records import StageReport, finish_report, given


def run_filter(input_path: str | os.PathLike, output_path: str | os.PathLike, *, workers: int = 0,
               skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
               overwrite: bool = False, **options) -> StageReport:
    """Keep records with `meta.<field>` >= min_score, the best `top_fraction` of them (ties kept), or
    the best up to `keep_tokens` tokens. `options` are `FilterStage` fields (None keeps a default).
    The report gives the score cut-off that resulted (and with a budget, the tokens kept)."""
    from phi1.data.pipeline import run_stage_file
    from phi1.data.steps import FilterStage

    opts = given(**options)
    report, m = run_stage_file("filter", opts, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers)
    cfg = FilterStage(**opts)
    cut = m.get("cutoff.json") or {}
    report.details.update(field=cfg.field, min_score=cfg.min_score, top_fraction=cfg.top_fraction,
                          cutoff=cut.get("cutoff", cfg.min_score))
    if cfg.keep_tokens is not None:
        report.details.update(keep_tokens=cfg.keep_tokens, kept_tokens=cut.get("kept_tokens"),
                              tokens_scored=cut.get("tokens_scored"),
                              tokens_counted_by=cfg.tokenizer or f"utf-8 bytes / {cfg.bytes_per_token}")
    return finish_report(report, quiet)
