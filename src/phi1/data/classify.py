"""`phi1 data classify train|eval|score`: a random-forest quality classifier over encoder features.

As in the paper, a small set of judge annotations (`meta.edu_label`, 0-5) trains
a random forest on text embeddings; the forest then scores the whole corpus
(`meta.edu_score` in [0, 1]: the probability of "educational" for the
classifier, the predicted label / 5 for the regressor).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from phi1.errors import ConfigError, Phi1Error
from phi1.data.features import describe, make_encoder
from phi1.data.records import StageReport, finish_report, iter_records
from phi1.utils.io import atomic_write, atomic_write_json
from phi1.utils.progress import progress

FORMAT = "phi1-quality-classifier-v1"


@dataclass
class TrainConfig:
    encoder: str = "hashing"
    task: str = "classification"   # or "regression"
    threshold: float = 3.0         # a label >= threshold counts as educational
    test_fraction: float = 0.2
    n_estimators: int = 200
    max_depth: int | None = None
    seed: int = 0
    workers: int = 0

    def validate(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ConfigError(f"classify.task: {self.task!r} must be 'classification' or 'regression'")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"classify.test_fraction: {self.test_fraction} must be in (0, 1)")
        if self.n_estimators < 1:
            raise ConfigError(f"classify.n_estimators: {self.n_estimators} must be >= 1")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + ".json")


def _labelled(input_path, label_field: str, skip_bad_lines: bool, report: StageReport):
    """The labelled texts in id order, so that the split and the forest do not depend on the order the
    records were written in (a stage directory's shards differ with the task count)."""
    rows = []
    for rec in iter_records(input_path, report, skip_bad_lines=skip_bad_lines):
        lab = rec["meta"].get(label_field)
        if isinstance(lab, (int, float)) and not isinstance(lab, bool):
            rows.append((str(rec["id"]), rec["text"], float(lab)))
    rows.sort(key=lambda r: r[0])
    texts, labels = [r[1] for r in rows], [r[2] for r in rows]
    if len(texts) < 10:
        raise Phi1Error(f"{input_path}: only {len(texts)} records carry meta.{label_field}; "
                        "annotate more (phi1 data annotate --sample N) before training")
    return texts, np.array(labels)


def _metrics(task: str, threshold: float, y_true: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

    yb = (y_true >= threshold).astype(int)
    pb = (pred >= (0.5 if task == "classification" else threshold / 5.0)).astype(int)
    majority = max(yb.mean(), 1 - yb.mean()) if len(yb) else 0.0
    out = {"n": int(len(yb)), "accuracy": round(float(accuracy_score(yb, pb)), 4),
           "f1": round(float(f1_score(yb, pb, zero_division=0)), 4), "majority_baseline": round(float(majority), 4)}
    if task == "regression":
        out["mae"] = round(float(mean_absolute_error(y_true, pred * 5.0)), 4)
        out["r2"] = round(float(r2_score(y_true, pred * 5.0)), 4) if len(y_true) > 1 else 0.0
    return out


def _predict(model, task: str, X) -> np.ndarray:
    """Scores in [0, 1]: P(educational) or predicted label / 5."""
    if task == "classification":
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(X.shape[0])
    return np.clip(model.predict(X) / 5.0, 0.0, 1.0)


def run_classify_train(
    input_path: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    encoder: str = "hashing",
    task: str = "classification",
    threshold: float = 3.0,
    label_field: str = "edu_label",
    test_fraction: float = 0.2,
    n_estimators: int = 200,
    max_depth: int | None = None,
    seed: int = 0,
    workers: int = 0,
    skip_bad_lines: bool = False,
    quiet: bool = False,
) -> dict:
    """Train on records with `meta.<label_field>`; save `<model>` (joblib) + `<model>.json`; return held-out metrics."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.model_selection import train_test_split

    cfg = TrainConfig(encoder, task, threshold, test_fraction, n_estimators, max_depth, seed, workers)
    cfg.validate()
    t0 = time.perf_counter()
    report = StageReport("classify-train", input=str(input_path))
    texts, labels = _labelled(input_path, label_field, skip_bad_lines, report)
    enc = make_encoder(encoder)
    X = _encode(enc, texts, quiet)
    y = (labels >= threshold).astype(int) if task == "classification" else labels
    strat = y if task == "classification" and min(np.bincount(y, minlength=2)) >= 2 else None
    idx_tr, idx_te = train_test_split(np.arange(len(texts)), test_size=test_fraction, random_state=seed, stratify=strat)
    Model = RandomForestClassifier if task == "classification" else RandomForestRegressor
    kw = {"class_weight": "balanced"} if task == "classification" else {}
    model = Model(n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=workers or -1, **kw)
    model.fit(X[idx_tr], y[idx_tr])
    held_out = _metrics(task, threshold, labels[idx_te], _predict(model, task, X[idx_te]))
    # The saved model is refit on all labelled data: the held-out numbers describe the recipe, not a lucky split.
    model.fit(X, y)
    meta = {"format": FORMAT, "encoder": describe(enc), "task": task, "threshold": threshold, "label_field": label_field,
            "n_labelled": len(texts), "held_out": held_out, "n_estimators": n_estimators, "seed": seed,
            "sklearn": __import__("sklearn").__version__, "seconds": round(time.perf_counter() - t0, 2)}
    with atomic_write(model_path, "wb") as fh:
        joblib.dump(model, fh)
    atomic_write_json(sidecar_path(model_path), meta)
    if not quiet:
        print(f"classify train: {len(texts)} labelled, held-out accuracy {held_out['accuracy']:.3f} "
              f"(majority {held_out['majority_baseline']:.3f}), F1 {held_out['f1']:.3f}; saved {model_path}",
              file=sys.stderr)
    return meta


def load_classifier(model_path: str | os.PathLike, encoder: str | None = None):
    """(model, sidecar, encoder) — refusing an encoder whose fingerprint differs from the training one."""
    side = sidecar_path(model_path)
    if not Path(model_path).exists() or not side.exists():
        raise Phi1Error(f"{model_path}: classifier or its sidecar {side.name} not found; run `phi1 data classify train` first")
    meta = _read_json(side)
    if meta.get("format") != FORMAT:
        raise Phi1Error(f"{side}: not a phi1 quality classifier (format {meta.get('format')!r}, expected {FORMAT})")
    trained = meta.get("encoder")
    if not isinstance(trained, dict) or not isinstance(trained.get("spec"), str) or "fingerprint" not in trained \
            or not isinstance(meta.get("task"), str) or "label_field" not in meta:
        raise Phi1Error(f"{side}: incomplete classifier sidecar (no encoder/task/label_field); "
                        "retrain it with `phi1 data classify train`")
    if encoder and encoder != trained["spec"]:
        enc = make_encoder(encoder)
    else:
        enc = make_encoder(trained["spec"])
    fp = enc.fingerprint()
    if fp != trained["fingerprint"]:
        raise Phi1Error(
            f"{model_path}: trained with encoder {trained['spec']} (fingerprint {trained['fingerprint']}), but the "
            f"encoder now is {enc.spec} (fingerprint {fp}); score with the same encoder or retrain the classifier"
        )
    if Path(model_path).is_dir():
        raise Phi1Error(f"{model_path}: is a directory; give the classifier file `phi1 data classify train` wrote")
    try:
        with open(model_path, "rb") as fh:
            model = joblib.load(fh)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file fails in many ways inside unpickling)
        raise Phi1Error(f"{model_path}: not a readable classifier ({type(exc).__name__}: {str(exc)[:120]}); the file is "
                        "truncated or not one `phi1 data classify train` wrote; retrain it with `phi1 data classify train`"
                        ) from None
    if not hasattr(model, "predict"):
        raise Phi1Error(f"{model_path}: holds a {type(model).__name__}, not a classifier; "
                        "retrain it with `phi1 data classify train`")
    return model, meta, enc


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Phi1Error(f"{path}: malformed classifier sidecar ({getattr(exc, 'msg', exc)}); retrain the classifier "
                        "with `phi1 data classify train`") from None
    if not isinstance(data, dict):
        raise Phi1Error(f"{path}: malformed classifier sidecar (not a JSON object); retrain the classifier "
                        "with `phi1 data classify train`")
    return data


def run_classify_eval(input_path, model_path, *, encoder: str | None = None, skip_bad_lines: bool = False,
                      quiet: bool = False) -> dict:
    """Accuracy/F1 of a saved classifier against `meta.<label_field>` in `input_path`."""
    model, meta, enc = load_classifier(model_path, encoder)
    report = StageReport("classify-eval", input=str(input_path))
    texts, labels = _labelled(input_path, meta["label_field"], skip_bad_lines, report)
    m = _metrics(meta["task"], meta["threshold"], labels, _predict(model, meta["task"], _encode(enc, texts, quiet)))
    if not quiet:
        print(f"classify eval: {m}", file=sys.stderr)
    return m


def _encode(enc, texts: list[str], quiet: bool, batch: int = 256):
    import scipy.sparse as sp

    parts = [enc.encode(texts[s : s + batch]) for s in progress(range(0, len(texts), batch), desc="encode", unit="batch")]
    if not parts:
        return enc.encode([])
    return sp.vstack(parts).tocsr() if sp.issparse(parts[0]) else np.concatenate(parts)


def run_classify_score(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    classifier: str | os.PathLike,
    encoder: str | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Add `meta.edu_score` in [0, 1] to every record, through the same blocks as a `classify-score`
    stage of `phi1 data run` (`phi1.data.steps.ClassifyScoreStage`): `workers` tasks score in parallel."""
    from phi1.data.pipeline import run_stage_file

    _, meta, _ = load_classifier(classifier, encoder)  # a missing or mismatched classifier fails here, once
    opts = {k: v for k, v in dict(classifier=str(classifier), encoder=encoder, batch_size=batch_size).items()
            if v is not None}
    scores: list[float] = []
    report, _ = run_stage_file("classify-score", opts, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers,
                               on_keep=lambda rec: scores.append(rec["meta"]["edu_score"]))
    report.details.update(classifier=str(classifier), encoder=meta["encoder"]["spec"], task=meta["task"])
    if scores:
        q = np.quantile(scores, [0.1, 0.5, 0.9])
        report.details["score_quantiles"] = {"p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4),
                                             "p90": round(float(q[2]), 4)}
    return finish_report(report, quiet)
