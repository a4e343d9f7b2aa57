"""The `classify` stage: the paper's quality classifier, a random forest (or a linear head) trained on
the annotated sample's labels over a code model's embeddings (`phi1.data.classify`). Its output is the
classifier file `classifier.joblib` (+ `.json` sidecar) in the stage directory: `@classify` in a
pipeline names it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from phi1.data.classify import HEADS, TASKS, run_classify_eval, train_classifier
from phi1.data.engine import Block
from phi1.data.features import ENCODER_HELP, EncoderOptions, EncoderRun
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, commit_block, config_of
from phi1.errors import ConfigError

CLASSIFIER = "classifier.joblib"


@dataclass
class ClassifyStage(EncoderOptions):
    """The classify stage's settings: the encoder (`EncoderOptions`), the head and its training."""

    encoder: str = "hashing"  # hashing (offline) | hf:DIR_OR_NAME (the paper: hf:Salesforce/codegen-350M-mono) | minilm | st:DIR
    head: str = "forest"  # forest (the paper's random forest) | linear (FineWeb-Edu's linear head)
    task: str = "classification"  # classification (label >= threshold) | regression (the label itself)
    threshold: float = 3.0  # a label >= threshold counts as educational
    label_field: str = "edu_label"  # the meta field holding the label
    test_fraction: float = 0.2  # held out for the reported metrics
    n_estimators: int = 200  # forest: trees
    max_depth: int | None = None  # forest: tree depth (None = grow fully)
    alpha: float = 1.0  # linear: L2 penalty (ridge regression; 1/C for logistic regression)
    seed: int = 0  # the split's and the forest's seed

    def validate(self) -> None:
        EncoderOptions.validate(self)
        if self.head not in HEADS:
            raise ConfigError(f"classify.head: {self.head!r} must be one of {', '.join(HEADS)}")
        if self.task not in TASKS:
            raise ConfigError(f"classify.task: {self.task!r} must be 'classification' or 'regression'")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"classify.test_fraction: {self.test_fraction} must be in (0, 1)")
        if self.n_estimators < 1:
            raise ConfigError(f"classify.n_estimators: {self.n_estimators} must be >= 1")
        if not self.alpha > 0:
            raise ConfigError(f"classify.alpha: {self.alpha} must be > 0")


class TrainClassifier(PipelineStep):
    name = "train classifier"

    def __init__(self, source: Path, out: Path, cfg: ClassifyStage, skip_bad_lines: bool):
        super().__init__()
        self.source, self.out, self.cfg, self.skip_bad_lines = Path(source), Path(out), cfg, skip_bad_lines

    def run(self, data, rank: int = 0, world_size: int = 1):
        meta = train_classifier(self.source, self.out, self.cfg, workers=1, skip_bad_lines=self.skip_bad_lines,
                                quiet=True)
        self.stat_update("labelled", value=meta["n_labelled"])
        for key in ("encoded", "cached", "truncated", "forward_passes"):
            self.stat_update(key, value=int(meta["embeddings"].get(key, 0)))


def build_classify(ctx: StageContext, cfg: ClassifyStage) -> list[Block]:
    return [Block("train", [TrainClassifier(ctx.input, ctx.dir / CLASSIFIER, cfg, ctx.skip_bad_lines)], tasks=1),
            commit_block(ctx, files=(CLASSIFIER + ".json",))]


def run_classify(input_path: str | os.PathLike, classifier: str | os.PathLike, *, cfg: ClassifyStage | None = None,
                 workers: int = 0, skip_bad_lines: bool = False, quiet: bool = False, overwrite: bool = False,
                 rejected: str | None = None, **options) -> dict:
    """Train on records with `meta.<label_field>`; save `classifier` (joblib) + `classifier.json`; return
    the sidecar (held-out metrics, the encoder, how many documents were embedded, cached and cut).
    `options` are `ClassifyStage` fields (None keeps the default); `workers` are the forest's threads."""
    cfg = config_of(KIND, cfg, options)
    return train_classifier(input_path, classifier, cfg, workers=workers, skip_bad_lines=skip_bad_lines, quiet=quiet)


def _print_held_out(meta: dict, args) -> None:
    print(json.dumps(meta["held_out"]))


def _eval_command(sub) -> None:
    from phi1.utils.cliio import declare_io
    from phi1.utils.config import add_config_flags

    e = sub.add_parser("classify-eval", help="precision/recall/F1 and the confusion matrix of a saved classifier")
    e.add_argument("input", help="input JSONL file (records with id, text, meta.<label_field>)")
    e.add_argument("--classifier", required=True, help="the classifier file `phi1 data classify` wrote")
    e.add_argument("--encoder", help=ENCODER_HELP + " (default: the training encoder; must match its fingerprint)")
    add_config_flags(e, EncoderRun)
    e.add_argument("--embed-cache", help="embedding cache folder (default: the training default); off = none")
    e.add_argument("--skip-bad-lines", action="store_true", help="skip malformed JSONL lines (counted) instead of failing")
    e.add_argument("--quiet", action="store_true", help="no summary on stderr")
    declare_io(e, inputs=("input", "classifier"))

    def run(args) -> int:
        from phi1.utils.config import config_from_args

        rc = config_from_args(EncoderRun, args, where="classify-eval")
        print(json.dumps(run_classify_eval(args.input, args.classifier, encoder=args.encoder, run=rc,
                                           embed_cache=args.embed_cache, skip_bad_lines=args.skip_bad_lines,
                                           quiet=args.quiet)))
        return 0

    e.set_defaults(func=run)


KIND = StageKind(
    "classify", ClassifyStage, build_classify, run_classify,
    help="train the quality classifier (random forest on embeddings) on the annotated labels",
    output="classifier", output_help="where to save the classifier (a .json sidecar goes beside it)",
    derived=(".json",), rejected=False, workers_help="forest: CPU threads (0 = all)",
    files=(CLASSIFIER, CLASSIFIER + ".json"), ref=CLASSIFIER,
    report=_print_held_out, commands=_eval_command,
    demo=DemoPlace("annotate", "train the quality classifier"))
