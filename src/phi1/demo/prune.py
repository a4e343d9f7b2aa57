"""`phi1 ablate --prune-thresholds 0.95,0.9,0.85,0.8`: the paper's pruning study (§5, Table 3).

Does the finetuned model score well only because its exercises resemble HumanEval? Every exercise is
scored against every HumanEval problem (`phi1.data.similarity`: the AST match rate, and an embedding
similarity with a configurable encoder). At each threshold τ the exercises closer than τ to any problem
are removed and one arm is finetuned on the rest, from the same base model, with the same steps; the
`full` arm is finetuned on all of them. HumanEval's problems are split by τ: "similar" when some exercise
of the full set scores >= τ against it. The table gives, per τ, the problem counts, pass@1 and solution
loss of the full arm and of the pruned arm on each half, and the exercises removed.

The base is `prune.base` (any phi1/HF model directory with its tokenizer) or, when unset, pretrained
here exactly as `phi1 demo` does (data stages, tokenizer, pack, pretrain). The exercises are
`prune.exercises` (JSONL files or stage directories) or the run's mined exercises.
"""

from __future__ import annotations

import json
from pathlib import Path

from phi1.demo.config import DemoConfig
from phi1.demo.layout import Layout
from phi1.demo.pipeline import (data_stages, eval_stages, export_stage, pack_stage, train_config,
                                train_stage, training_stages)
from phi1.demo.runner import own_run_dir
from phi1.errors import ConfigError, Phi1Error
from phi1.utils.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from phi1.utils.stagegraph import Stage, StageGraph

FULL = "full"


def parse_thresholds(text: str) -> list[float]:
    """`0.95,0.9,0.85` -> [0.95, 0.9, 0.85], with one error line naming a bad entry."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            out.append(float(part))
        except ValueError:
            raise ConfigError(f"--prune-thresholds: {part!r} is not a number; pass e.g. 0.95,0.9,0.85,0.8") from None
    return out


def check_study(cfg: DemoConfig, thresholds: list[float]) -> list[float]:
    """Validate the study's settings before anything runs; the thresholds, highest first."""
    from phi1.data.similarity import METRICS

    p = cfg.prune
    if not thresholds:
        raise ConfigError("prune.thresholds: empty; give at least one, e.g. --prune-thresholds 0.95,0.9,0.85,0.8")
    for t in thresholds:
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"prune.thresholds: {t} must be in (0, 1]")
    if len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"prune.thresholds: {thresholds} repeats a value; give each threshold once")
    if p.metric not in METRICS:
        raise ConfigError(f"prune.metric: {p.metric!r} is not one of {', '.join(METRICS)}")
    if not cfg.finetune.recipe:
        raise ConfigError("finetune.recipe: empty; the pruning study finetunes each arm (e.g. tiny-finetune.yaml); "
                          "use a demo recipe such as demo-tiny.yaml")
    if p.base is not None and not (Path(p.base) / "config.json").is_file():
        raise Phi1Error(f"prune.base {p.base}: not a model directory (no config.json); give a phi1/HF model "
                        "directory, or null to pretrain the base here")
    for f in p.exercises:
        if not Path(f).exists():
            raise Phi1Error(f"prune.exercises: {f}: not found; give JSONL files or stage directories of exercises")
    return sorted(thresholds, reverse=True)


def arm_name(tau: float | None) -> str:
    return FULL if tau is None else f"tau-{tau:g}"


def run_prune_study(cfg: DemoConfig, run_dir: Path, thresholds: list[float] | None = None, *, device: str = "cpu",
                    log=print) -> Path:
    """Run (or resume) the study in `run_dir`; returns the path of prune.md."""
    taus = check_study(cfg, list(cfg.prune.thresholds if thresholds is None else thresholds))
    with own_run_dir(Path(run_dir), "ablate"):
        return _run(cfg, Path(run_dir), taus, device, log)


def _run(cfg: DemoConfig, run_dir: Path, taus: list[float], device: str, log) -> Path:
    L = Layout(run_dir)
    study = L.root / "prune"
    p = cfg.prune
    sources = [Path(f) for f in p.exercises] or [L.stage("exercises")]
    pinned = {"metric": p.metric, "encoder": p.encoder, "exercises": [str(s) for s in sources],
              "base": p.base, "finetune": {"recipe": cfg.finetune.recipe, "set": cfg.finetune.set}}
    _pin(study / "study.json", pinned)
    stages: list = []
    base_after: tuple[str, ...] = ()
    if not p.exercises or p.base is None:
        stages += data_stages(cfg, L)
    if p.base is not None:
        base = Path(p.base)
        tokenizer = Path(cfg.tokenizer.path) if cfg.tokenizer.path else base
        tok_after: tuple[str, ...] = ()
    else:
        base = L.root / "models" / "base"
        tokenizer = Path(cfg.tokenizer.path) if cfg.tokenizer.path else L.tokenizer
        tok_after = () if cfg.tokenizer.path else ("tokenizer",)
        stages += [s for s in training_stages(cfg, L, pretrain_inputs=[L.stage("decontaminate")], finetune_inputs=[L.stage("exercises")],
                                              device=device, after=("decontaminate", "exercises"))
                   if s.name in ("tokenizer", "pack-pretrain", "pretrain")]
        # The paper's base is a kept step (phi-1-base: step 24k of 36k) when the recipe keeps one.
        stages.append(export_stage(L, "export-base", "pretrain", "base", base, ("pretrain",),
                                   "export the pretrained base"))
        base_after = ("export-base",)
    ex_after = () if p.exercises else ("exercises",)
    scores = study / "scores.jsonl"
    floor = min(0.5, min(taus))
    stages.append(Stage(
        "prune-score", "prune-score", {"sources": [str(s) for s in sources], "metric": p.metric,
                                       "encoder": p.encoder, "floor": floor},
        run=lambda fp: score_exercises(sources, study, metric=p.metric, encoder=p.encoder, floor=floor),
        inputs=tuple(Path(f) for f in p.exercises), after=ex_after, title="score every exercise against HumanEval",
        command=f"# score {', '.join(map(str, sources))} against HumanEval (AST match rate, embedding "
                f"{p.encoder}) into {scores}"))
    full_shards = L.shards / f"prune-{FULL}"
    for tau in [None, *taus]:
        name = arm_name(tau)
        inputs, after = sources, ex_after
        first = len(stages)
        if tau is not None:
            kept = study / name / "exercises.jsonl"
            stages.append(Stage(
                f"prune-split-{name}", "prune-split", {"tau": tau}, after=("prune-score",),
                run=lambda fp, tau=tau, kept=kept: split_exercises(sources, scores, tau, kept),
                title=f"prune the exercises at τ={tau:g}", command=f"# keep the exercises scoring < {tau:g} in {kept}"))
            inputs, after = [kept], (f"prune-split-{name}",)
        shards = L.shards / f"prune-{name}"
        stages.append(pack_stage(L, f"pack-prune-{name}", tokenizer, inputs, shards, 0.05, after + tok_after,
                                 f"pack the {name} exercises"))
        run_name = f"prune-{name}"
        # Every arm keeps its best checkpoint by the same held-out set: the full arm's val split
        # (the split is by document hash, so no arm trains on it).
        data = train_config(cfg.finetune, L, run_name, init=str(base), tokenizer=tokenizer, shards=shards,
                            extra={"run.device": device, "data.val": [{"path": str(full_shards), "weight": 1.0}]})
        stages.append(train_stage(L, f"finetune-{run_name}", data, title=f"finetune the {name} arm",
                                  after=(f"pack-prune-{name}", f"pack-prune-{FULL}") + base_after, run_name=run_name))
        model_dir = L.root / "models" / run_name
        stages.append(export_stage(L, f"export-{run_name}", run_name, "best", model_dir, (f"finetune-{run_name}",),
                                   f"export {run_name}"))
        stages += eval_stages(cfg, L, model_dir, L.eval / run_name, device, (f"export-{run_name}",))
        if tau is not None:  # an arm that removes nothing is the full arm: not trained twice
            for st in stages[first + 1:]:
                st.skip = lambda name=name: ("τ removes no exercise: this arm is the full arm"
                                             if _removed(study, name) == 0 else None)
    StageGraph(stages, L.root / ".stages", log=log).run()
    return write_prune_table(L, taus, p.metric)


def _pin(path: Path, pinned: dict) -> None:
    """One study per run directory: a rerun with other scoring settings is refused, not mixed in."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key, value in pinned.items():
            if old.get(key) != value:
                raise Phi1Error(f"{path}: this study was run with {key}={old.get(key)!r}, now {value!r}; rerun "
                                "with the original settings (thresholds may change) or use a new --out")
        return
    atomic_write_json(path, pinned)


def _records(sources: list[Path]):
    from phi1.data.records import iter_records

    for src in sources:
        yield from iter_records(src)


def score_exercises(sources: list[Path], study: Path, *, metric: str, encoder: str, floor: float) -> None:
    """scores.jsonl (per exercise, in input order: id, score under `metric`, closest task by each
    measure) and problems.json (per HumanEval task: the best score any exercise reached)."""
    from phi1.data.benchmarks import load_humaneval
    from phi1.data.similarity import BenchmarkSimilarity
    from phi1.utils.progress import progress

    sim = BenchmarkSimilarity(load_humaneval(), encoder=encoder, floor=floor)
    rows, batch = [], []

    def flush():
        for rec, s in zip(batch, sim.score([r["text"] for r in batch])):
            rows.append({"id": rec["id"], "score": s[metric]["score"], **s})
        batch.clear()

    bar = progress(desc="prune-score", unit="ex")
    for rec in _records(sources):
        batch.append(rec)
        if len(batch) >= 256:
            flush()
        bar.update(1)
    flush()
    bar.close()
    if not rows:
        raise Phi1Error(f"{', '.join(map(str, sources))}: no exercises to score")
    write_jsonl(study / "scores.jsonl", rows)
    atomic_write_json(study / "problems.json", {"metric": metric, "floor": floor, "exercises": len(rows),
                                                "tasks": sim.task_best()})


def split_exercises(sources: list[Path], scores: Path, tau: float, kept: Path) -> None:
    """The exercises scoring < τ, in input order; split.json beside them counts what went."""
    row_scores = [r["score"] for r in read_jsonl(scores)]
    recs = list(_records(sources))
    if len(recs) != len(row_scores):
        raise Phi1Error(f"{scores}: {len(row_scores)} scores for {len(recs)} exercises; the inputs changed "
                        "since scoring: use a new --out")
    keep = [r for r, s in zip(recs, row_scores) if s < tau]
    if not keep:
        raise Phi1Error(f"τ={tau:g} removes every one of the {len(recs)} exercises; use higher thresholds")
    write_jsonl(kept, keep)
    atomic_write_json(kept.with_name("split.json"), {"tau": tau, "exercises": len(recs), "kept": len(keep),
                                                     "removed": len(recs) - len(keep)})


def _removed(study: Path, name: str) -> int:
    return json.loads((study / name / "split.json").read_text())["removed"]


def _per_task(eval_dir: Path) -> tuple[dict[str, float], dict[str, tuple[float, int]]]:
    """task -> pass@1 (mean over its samples) and task -> (summed solution nats, tokens) of one arm."""
    passed: dict[str, list[int]] = {}
    for r in read_jsonl(eval_dir / "humaneval" / "results.jsonl", strict=False):
        passed.setdefault(r["task_id"], []).append(bool(r["passed"]))
    loss = json.loads((eval_dir / "solution_loss.json").read_text()).get("per_task") or {}
    return ({t: sum(v) / len(v) for t, v in passed.items()}, {t: (s, n) for t, (s, n) in loss.items()})


def _mean_pass(per: dict[str, float], tasks: list[str]) -> float | None:
    vals = [per[t] for t in tasks if t in per]
    return sum(vals) / len(vals) if vals else None


def prune_table(L: Layout, taus: list[float], metric: str) -> dict:
    """The numbers of Table 3: per τ and problem half, counts, pass@1 and solution loss of both arms."""
    from phi1.eval.loss import mean_loss

    study = L.root / "prune"
    best = {t: d[metric] for t, d in json.loads((study / "problems.json").read_text())["tasks"].items()}
    full_pass, full_loss = _per_task(L.eval / f"prune-{FULL}")
    tasks = sorted(full_pass, key=lambda t: int(t.split("/")[-1]) if t.split("/")[-1].isdigit() else t)
    out = {"metric": metric, "problems": len(tasks), "thresholds": []}
    for tau in taus:
        name = arm_name(tau)
        split = json.loads((study / name / "split.json").read_text())
        arm_pass, arm_loss = (_per_task(L.eval / f"prune-{name}") if split["removed"]
                              else (full_pass, full_loss))
        similar = [t for t in tasks if best.get(t, 0.0) >= tau]
        halves = {"similar": similar, "non-similar": [t for t in tasks if t not in set(similar)], "total": tasks}
        out["thresholds"].append({
            "tau": tau, "exercises_removed": split["removed"], "exercises_kept": split["kept"],
            "halves": {h: {"problems": len(ts), "pass@1_full": _mean_pass(full_pass, ts),
                           "pass@1_pruned": _mean_pass(arm_pass, ts), "loss_full": mean_loss(full_loss, ts),
                           "loss_pruned": mean_loss(arm_loss, ts)} for h, ts in halves.items()}})
    return out


def write_prune_table(L: Layout, taus: list[float], metric: str) -> Path:
    """prune.json, prune.md and prune.html (with a figure) in the run directory."""
    from phi1.demo.doc import Doc

    table = prune_table(L, taus, metric)
    atomic_write_json(L.root / "prune.json", table)
    rows = []
    for t in table["thresholds"]:
        for h, d in t["halves"].items():
            rows.append([f"{t['tau']:g}" if h == "similar" else "", h, d["problems"], _pct(d["pass@1_full"]),
                         _pct(d["pass@1_pruned"]), _f(d["loss_full"]), _f(d["loss_pruned"]),
                         t["exercises_removed"] if h == "similar" else ""])
    fig = _figure(L, table)
    doc = Doc("phi1 pruning study: is the finetuned model's score only its exercises' likeness to HumanEval?")
    doc.p(f"Exercises scored against HumanEval by {'AST match rate' if metric == 'ast' else 'embedding similarity'}; "
          f"a problem is similar at τ when some exercise scores >= τ against it. {table['problems']} problems "
          "evaluated; each pruned arm is finetuned from the same base with the same steps as the full arm.")
    doc.table(["τ", "HumanEval problems", "count", "pass@1 full", "pass@1 pruned", "solution loss full",
               "solution loss pruned", "exercises removed"], rows)
    doc.image(fig, "pass@1 and solution loss per τ, similar versus non-similar problems")
    atomic_write_text(L.root / "prune.md", doc.markdown(L.root))
    atomic_write_text(L.root / "prune.html", doc.html())
    return L.root / "prune.md"


def _figure(L: Layout, table: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = [t["tau"] for t in table["thresholds"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for half, style in (("similar", "o-"), ("non-similar", "s--")):
        for arm, color in (("full", "#4c72b0"), ("pruned", "#c44e52")):
            ys = [t["halves"][half][f"pass@1_{arm}"] for t in table["thresholds"]]
            ls = [t["halves"][half][f"loss_{arm}"] for t in table["thresholds"]]
            axes[0].plot(taus, [y if y is not None else float("nan") for y in ys], style, color=color,
                         label=f"{arm}, {half}")
            axes[1].plot(taus, [v if v is not None else float("nan") for v in ls], style, color=color,
                         label=f"{arm}, {half}")
    axes[0].set_title("HumanEval pass@1")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_title("solution loss (nats/token)")
    axes[2].bar([f"{t:g}" for t in taus], [t["exercises_removed"] for t in table["thresholds"]], color="#55a868")
    axes[2].set_title("exercises removed")
    for ax in axes:
        ax.set_xlabel("τ")
    axes[0].invert_xaxis()
    axes[1].invert_xaxis()
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = L.root / "figures" / "prune.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v):
    return "-" if v is None else f"{v:.4f}"


__all__ = ["run_prune_study", "parse_thresholds", "score_exercises", "split_exercises", "prune_table"]
