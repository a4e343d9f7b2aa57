"""The quality classifier (the `classify` and `score` stages): a random forest over encoder features.

As in the paper, a small set of judge annotations (`meta.edu_label`, 0-5) trains
a random forest on text embeddings; the forest then scores the whole corpus
(`meta.edu_score` in [0, 1]: the probability of "educational" for the
classifier, the predicted label / 5 for the regressor).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np

from phi1.errors import Phi1Error
from phi1.data.features import EncoderOptions, EncoderRun, describe, embed, make_encoder
from phi1.data.records import StageReport, iter_records
from phi1.utils.io import atomic_write, atomic_write_json

FORMAT = "phi1-quality-classifier-v1"
HEADS = ("forest", "linear")
TASKS = ("classification", "regression")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path) + ".json")


def _labelled(input_path, label_field: str, skip_bad_lines: bool, report: StageReport):
    """The labelled texts in id order, so that the split and the head do not depend on the order the
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
    """Accuracy, precision, recall and F1 of "educational" (label >= threshold) at the head's cut, the
    2x2 confusion matrix, and for regression heads MAE, R^2 and the 6x6 matrix of rounded labels
    (as the FineWeb-Edu classifier card reports)."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, mean_absolute_error,
                                 precision_score, r2_score, recall_score)

    yb = (y_true >= threshold).astype(int)
    pb = (pred >= (0.5 if task == "classification" else threshold / 5.0)).astype(int)
    majority = max(yb.mean(), 1 - yb.mean()) if len(yb) else 0.0
    out = {"n": int(len(yb)), "accuracy": round(float(accuracy_score(yb, pb)), 4),
           "precision": round(float(precision_score(yb, pb, zero_division=0)), 4),
           "recall": round(float(recall_score(yb, pb, zero_division=0)), 4),
           "f1": round(float(f1_score(yb, pb, zero_division=0)), 4), "majority_baseline": round(float(majority), 4),
           "threshold": threshold,
           "confusion": confusion_matrix(yb, pb, labels=[0, 1]).tolist()}
    if task == "regression":
        out["mae"] = round(float(mean_absolute_error(y_true, pred * 5.0)), 4)
        out["r2"] = round(float(r2_score(y_true, pred * 5.0)), 4) if len(y_true) > 1 else 0.0
        lab = np.clip(np.rint(y_true), 0, 5).astype(int)
        got = np.clip(np.rint(pred * 5.0), 0, 5).astype(int)
        out["confusion_labels"] = confusion_matrix(lab, got, labels=list(range(6))).tolist()
    return out


def format_confusion(m: dict) -> str:
    """The confusion matrices of `_metrics`, as text (rows: true, columns: predicted)."""
    tn, fp = m["confusion"][0]
    fn, tp = m["confusion"][1]
    lines = [f"educational = label >= {m['threshold']:g}: precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
             f"F1 {m['f1']:.3f}, accuracy {m['accuracy']:.3f} (majority {m['majority_baseline']:.3f}), n {m['n']}",
             "                 predicted no   predicted yes",
             f"  true no        {tn:>12}   {fp:>13}",
             f"  true yes       {fn:>12}   {tp:>13}"]
    if "confusion_labels" in m:
        lines += ["labels (rows true 0-5, columns predicted 0-5):"]
        lines += ["  " + str(i) + "  " + " ".join(f"{v:>6}" for v in row) for i, row in enumerate(m["confusion_labels"])]
    return "\n".join(lines)


def _predict(model, task: str, X) -> np.ndarray:
    """Scores in [0, 1]: P(educational) or predicted label / 5."""
    if task == "classification":
        proba = model.predict_proba(X)
        classes = list(model.classes_)
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(X.shape[0])
    return np.clip(model.predict(X) / 5.0, 0.0, 1.0)


def make_head(cfg, sparse: bool, workers: int = 0):
    """The paper's random forest, or a FineWeb-Edu-style linear head (standardised features, then ridge
    regression on the label, or logistic regression on label >= threshold)."""
    if cfg.head == "forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        if cfg.task == "classification":
            return RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, random_state=cfg.seed,
                                          n_jobs=workers or -1, class_weight="balanced")
        return RandomForestRegressor(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, random_state=cfg.seed,
                                     n_jobs=workers or -1)
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler(with_mean=not sparse)
    if cfg.task == "classification":
        return make_pipeline(scale, LogisticRegression(C=1.0 / cfg.alpha, max_iter=2000, class_weight="balanced",
                                                       random_state=cfg.seed))
    return make_pipeline(scale, Ridge(alpha=cfg.alpha))


def train_classifier(input_path: str | os.PathLike, model_path: str | os.PathLike, cfg, *, workers: int = 0,
                     skip_bad_lines: bool = False, quiet: bool = False) -> dict:
    """Train on records with `meta.<label_field>`; save `<model>` (joblib) + `<model>.json`; return the
    sidecar (held-out metrics, the encoder, how many documents were embedded, cached and cut). `cfg` is
    the classify stage's validated config (`phi1.data.stages.classify.ClassifyStage`)."""
    import scipy.sparse as sp
    from sklearn.model_selection import train_test_split

    t0 = time.perf_counter()
    report = StageReport("classify", input=str(input_path))
    texts, labels = _labelled(input_path, cfg.label_field, skip_bad_lines, report)
    enc = make_encoder(cfg.encoder, cfg)
    X, emb = embed(enc, texts, cfg.embed_cache, desc="embed (train)")
    emb.update(truncated=enc.truncated, forward_passes=enc.forward_passes)
    y = (labels >= cfg.threshold).astype(int) if cfg.task == "classification" else labels
    strat = y if cfg.task == "classification" and min(np.bincount(y, minlength=2)) >= 2 else None
    idx_tr, idx_te = train_test_split(np.arange(len(texts)), test_size=cfg.test_fraction, random_state=cfg.seed,
                                      stratify=strat)
    model = make_head(cfg, sp.issparse(X), workers)
    model.fit(X[idx_tr], y[idx_tr])
    held_out = _metrics(cfg.task, cfg.threshold, labels[idx_te], _predict(model, cfg.task, X[idx_te]))
    # The saved head is refit on all labelled data: the held-out numbers describe the recipe, not a lucky split.
    model.fit(X, y)
    meta = {"format": FORMAT, "encoder": describe(enc), "head": cfg.head, "task": cfg.task, "threshold": cfg.threshold,
            "label_field": cfg.label_field, "n_labelled": len(texts), "held_out": held_out,
            "n_estimators": cfg.n_estimators, "alpha": cfg.alpha, "seed": cfg.seed, "embeddings": emb,
            "sklearn": __import__("sklearn").__version__, "seconds": round(time.perf_counter() - t0, 2)}
    with atomic_write(model_path, "wb") as fh:
        joblib.dump(model, fh)
    atomic_write_json(sidecar_path(model_path), meta)
    if not quiet:
        print(f"classify ({cfg.head}, {cfg.task}): {len(texts)} labelled, {emb['encoded']} embedded, "
              f"{emb['cached']} from the cache, {emb['truncated']} cut at {enc.options().get('max_tokens', '-')} tokens; "
              f"held-out precision {held_out['precision']:.3f} recall {held_out['recall']:.3f} F1 {held_out['f1']:.3f}; "
              f"saved {model_path}", file=sys.stderr)
    return meta


def load_classifier(model_path: str | os.PathLike, encoder: str | None = None, run: EncoderRun | None = None,
                    embed_cache: str | None = None):
    """(model, sidecar, encoder) — refusing an encoder whose fingerprint differs from the training one.
    The encoder computes what it did in training (the sidecar's pooling and length) on `run`'s device,
    dtype and batch size."""
    side = sidecar_path(model_path)
    if not Path(model_path).exists() or not side.exists():
        raise Phi1Error(f"{model_path}: classifier or its sidecar {side.name} not found; run `phi1 data classify` first")
    meta = _read_json(side)
    if meta.get("format") != FORMAT:
        raise Phi1Error(f"{side}: not a phi1 quality classifier (format {meta.get('format')!r}, expected {FORMAT})")
    trained = meta.get("encoder")
    if not isinstance(trained, dict) or not isinstance(trained.get("spec"), str) or "fingerprint" not in trained \
            or not isinstance(meta.get("task"), str) or "label_field" not in meta:
        raise Phi1Error(f"{side}: incomplete classifier sidecar (no encoder/task/label_field); "
                        "retrain it with `phi1 data classify`")
    saved = trained.get("options") if isinstance(trained.get("options"), dict) else {}
    opts = EncoderOptions(**(run or EncoderRun()).run_fields(), embed_cache=embed_cache,
                          **{k: saved[k] for k in ("pooling", "max_tokens") if k in saved})
    enc = make_encoder(encoder or trained["spec"], opts)
    fp = enc.fingerprint()
    if fp != trained["fingerprint"]:
        raise Phi1Error(
            f"{model_path}: trained with encoder {trained['spec']} (fingerprint {trained['fingerprint']}), but the "
            f"encoder now is {enc.spec} (fingerprint {fp}); score with the same encoder or retrain the classifier"
        )
    if Path(model_path).is_dir():
        raise Phi1Error(f"{model_path}: is a directory; give the classifier file `phi1 data classify` wrote")
    try:
        with open(model_path, "rb") as fh:
            model = joblib.load(fh)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file fails in many ways inside unpickling)
        raise Phi1Error(f"{model_path}: not a readable classifier ({type(exc).__name__}: {str(exc)[:120]}); the file is "
                        "truncated or not one `phi1 data classify` wrote; retrain it with `phi1 data classify`"
                        ) from None
    if not hasattr(model, "predict"):
        raise Phi1Error(f"{model_path}: holds a {type(model).__name__}, not a classifier; "
                        "retrain it with `phi1 data classify`")
    return model, meta, enc


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Phi1Error(f"{path}: malformed classifier sidecar ({getattr(exc, 'msg', exc)}); retrain the classifier "
                        "with `phi1 data classify`") from None
    if not isinstance(data, dict):
        raise Phi1Error(f"{path}: malformed classifier sidecar (not a JSON object); retrain the classifier "
                        "with `phi1 data classify`")
    return data


def run_classify_eval(input_path, model_path, *, encoder: str | None = None, run: EncoderRun | None = None,
                      embed_cache: str | None = None, skip_bad_lines: bool = False, quiet: bool = False) -> dict:
    """Precision, recall, F1 and the confusion matrix of a saved classifier against `meta.<label_field>`
    in `input_path` (embeddings from the cache where the training run left them)."""
    model, meta, enc = load_classifier(model_path, encoder, run, embed_cache)
    report = StageReport("classify-eval", input=str(input_path))
    texts, labels = _labelled(input_path, meta["label_field"], skip_bad_lines, report)
    X, emb = embed(enc, texts, embed_cache, desc="embed (eval)")
    m = _metrics(meta["task"], meta["threshold"], labels, _predict(model, meta["task"], X))
    m["embeddings"] = {**emb, "truncated": enc.truncated, "forward_passes": enc.forward_passes}
    if not quiet:
        print(f"classify-eval ({meta.get('head', 'forest')}, {meta['task']}) of {model_path} on {input_path}:\n"
              + format_confusion(m), file=sys.stderr)
    return m
