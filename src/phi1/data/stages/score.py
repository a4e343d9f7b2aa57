"""The `score` stage: `meta.edu_score` in [0, 1] for every record (P(educational), or the predicted
label / 5), by the classifier a `classify` stage trained, scoring in parallel tasks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from phi1.data.classify import _predict, load_classifier
from phi1.data.engine import Block, one_thread_per_task
from phi1.data.features import EncoderRun
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, config_of, one_block, run_stage_file
from phi1.errors import ConfigError


@dataclass
class ScoreStage(EncoderRun):
    """The score stage's settings. Pooling and length come from the classifier's sidecar: scoring
    computes the same embeddings the head was trained on."""

    classifier: str = ""  # the classifier file, or "@STAGE" naming a classify stage of the pipeline
    encoder: str | None = None  # override the training encoder (must match its fingerprint)

    def validate(self) -> None:
        EncoderRun.validate(self)
        if not self.classifier:
            raise ConfigError('score.classifier: required; name the classify stage, e.g. classifier: "@classify"')


class EduScorer(PipelineStep):
    """`meta.edu_score` in [0, 1] (P(educational), or predicted label / 5), encoding in chunks."""

    name = "edu score"

    def __init__(self, cfg: ScoreStage):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank: int = 0, world_size: int = 1):
        if world_size > 1:
            one_thread_per_task()
        model, meta, enc = load_classifier(self.cfg.classifier, self.cfg.encoder, self.cfg)
        if hasattr(model, "n_jobs"):
            model.n_jobs = 1  # parallelism is the tasks
        for batch in batched(data, max(512, self.cfg.batch_size)):
            cut = enc.truncated
            for doc, s in zip(batch, _predict(model, meta["task"], enc.encode([d.text for d in batch]))):
                doc.metadata["edu_score"] = round(float(s), 4)
                self.stat_update("scored")
            if enc.truncated > cut:
                self.stat_update("truncated", value=enc.truncated - cut)
            yield from batch


def build_score(ctx: StageContext, cfg: ScoreStage) -> list[Block]:
    return one_block(ctx, [EduScorer(cfg)], "score")


def run_score(input_path: str | os.PathLike, output_path: str | os.PathLike, *, cfg: ScoreStage | None = None,
              workers: int = 0, skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
              overwrite: bool = False, **options) -> StageReport:
    """Add `meta.edu_score` in [0, 1] to every record, `workers` tasks scoring in parallel. `options`
    are `ScoreStage` fields (`classifier` is required; None keeps a default)."""
    cfg = config_of(KIND, cfg, options)
    _, meta, _ = load_classifier(cfg.classifier, cfg.encoder, cfg)  # a missing or mismatched classifier fails here, once
    scores: list[float] = []
    report, m = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers,
                               on_keep=lambda rec: scores.append(rec["meta"]["edu_score"]))
    report.details.update(classifier=cfg.classifier, encoder=meta["encoder"]["spec"], head=meta.get("head", "forest"),
                          task=meta["task"], truncated=sum(n for k, n in m["counts"].items() if k.endswith("/truncated")))
    if scores:
        q = np.quantile(scores, [0.1, 0.5, 0.9])
        report.details["score_quantiles"] = {"p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4),
                                             "p90": round(float(q[2]), 4)}
    return finish_report(report, quiet)


KIND = StageKind(
    "score", ScoreStage, build_score, run_score,
    help="add meta.edu_score to every record with a trained classifier",
    inputs=("classifier",),
    demo=DemoPlace("dedup", "score every document", always={"classifier": "@classify"}))
