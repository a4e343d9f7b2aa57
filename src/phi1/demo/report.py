"""`phi1 report RUN_DIR`: report.md + report.html (figures embedded) from a run directory.

Everything here is read back from files the stages wrote, so the report can be
regenerated at any time and shows exactly what the run produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from phi1.demo.doc import Doc
from phi1.demo.layout import Layout
from phi1.errors import Phi1Error
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import atomic_write_text, read_jsonl

NOT_IN_FUNNEL = ("annotate", "classify")  # a labelled sample and a classifier: not a step of the corpus's funnel


def _json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _manifest(stage_dir: Path) -> dict | None:
    """A data stage's manifest.json (written last by `phi1 data run`), or None if it has not finished."""
    return _json(Path(stage_dir) / "manifest.json")


def _records(stage_dir: Path) -> list[dict]:
    from phi1.data.records import iter_records

    return list(iter_records(stage_dir, skip_bad_lines=True)) if _manifest(stage_dir) else []


def _rejected(stage_dir: Path) -> list[dict]:
    from phi1.data.records import iter_records

    d = Path(stage_dir) / "rejected"
    return list(iter_records(d, skip_bad_lines=True)) if _manifest(stage_dir) and any(d.glob("*.jsonl*")) else []


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bytes_per_token(L: Layout) -> float | None:
    m = _json(L.shards / "pretrain" / "manifest.json")
    if not m:
        return None
    toks = sum(sp.get("tokens", 0) for sp in (m.get("splits") or {}).values() if isinstance(sp, dict))
    nbytes = m.get("input_bytes")
    if toks and nbytes:
        return nbytes / toks
    return None


def funnel_rows(L: Layout) -> list[list]:
    bpt = bytes_per_token(L)
    rows = []
    from phi1.demo.config import demo_kinds

    for stage in (k for k in demo_kinds() if k not in NOT_IN_FUNNEL):
        m = _manifest(L.stage(stage))
        if not m:
            continue
        dropped = m.get("dropped", {})
        drops = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "-"
        chars = m.get("text_chars", 0)
        toks = f"{chars / bpt / 1e6:.2f}M" if bpt and chars else "-"
        read = m.get("kept", 0) + sum(dropped.values()) if stage != "exercises" else "-"
        rows.append([stage, read, m.get("kept", 0), drops, f"{chars / 1e6:.2f}", toks, m.get("tasks", "-")])
    return rows


def score_histogram(L: Layout, fig_dir: Path) -> tuple[Path | None, list[dict], list[dict], float | None]:
    recs = [r for r in _records(L.stage("score")) if isinstance(r.get("meta", {}).get("edu_score"), (int, float))]
    if not recs:
        return None, [], [], None
    scores = [r["meta"]["edu_score"] for r in recs]
    kept_ids = set()
    if _manifest(L.stage("filter")):
        kept_ids = {r.get("id") for r in _records(L.stage("filter"))}
    cut = min((r["meta"]["edu_score"] for r in recs if r.get("id") in kept_ids), default=None)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(scores, bins=40, color="#4c72b0")
    if cut is not None:
        ax.axvline(cut, color="#c44e52", linestyle="--", label=f"kept >= {cut:.3f}")
        ax.legend()
    ax.set_xlabel("educational-value score (classifier)")
    ax.set_ylabel("documents")
    ax.set_title("Educational value of the deduplicated corpus")
    fig.tight_layout()
    path = fig_dir / "edu_scores.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    recs.sort(key=lambda r: r["meta"]["edu_score"])
    return path, recs[-2:][::-1], recs[:2], cut


def loss_curves(L: Layout, fig_dir: Path) -> tuple[Path | None, dict]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    summary = {}
    any_data = False
    for ax, name in zip(axes, ("pretrain", "finetune")):
        f = L.run_dir(name) / "metrics.jsonl"
        if not f.exists():
            ax.set_title(f"{name}: no metrics")
            continue
        rows = list(read_jsonl(f, strict=False))
        tr = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
        va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r and "step" in r]
        if tr:
            any_data = True
            ax.plot(*zip(*tr), label="train", color="#4c72b0")
        if va:
            ax.plot(*zip(*va), "o-", label="validation", color="#c44e52")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        tps = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
        mfu = [r["mfu"] for r in rows if isinstance(r.get("mfu"), (int, float))]
        summary[name] = {
            "steps": tr[-1][0] if tr else 0,
            "final_train_loss": tr[-1][1] if tr else None,
            "final_val_loss": va[-1][1] if va else None,
            "tokens_per_s": sum(tps[len(tps) // 2:]) / max(1, len(tps[len(tps) // 2:])) if tps else None,
            "mfu": sum(mfu) / len(mfu) if mfu else None,
        }
    fig.tight_layout()
    path = fig_dir / "loss_curves.png"
    if any_data:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return (path if any_data else None), summary


def _fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def eval_results(eval_dir: Path) -> dict:
    he = _json(eval_dir / "humaneval" / "summary.json") or {}
    sl = _json(eval_dir / "solution_loss.json") or {}
    return {"pass@1": (he.get("pass_at_k") or {}).get("pass@1"), "tasks": he.get("tasks"),
            "solution_loss": sl.get("solution_loss", sl.get("loss")), "kinds": he.get("kinds", {})}


def _snippet(text: str, lines: int = 14) -> str:
    out = text.splitlines()[:lines]
    return "\n".join(out) + ("\n..." if len(text.splitlines()) > lines else "")


def checkpoint_choices(L: Layout) -> list[str]:
    """Which checkpoints the stages used, in words: the finetune's base and what chose the best step."""
    out = []
    ft = L.configs / "finetune.yaml"
    if ft.exists():
        try:
            init = (read_yaml_mapping(ft, "training config").get("model") or {}).get("init")
        except Phi1Error:
            init = None
        if init:
            out.append(f"The finetune started from {init}.")
    best = _json(L.run_dir("finetune") / "checkpoints" / "best.json")
    if best:
        where = best.get("selected_on") or "an unrecorded split (best.json from before phi1 recorded it)"
        v = best.get("value")
        value = f"{v:.4g}" if isinstance(v, (int, float)) else _fmt(v)
        out.append(f"The exported model is the finetune's best checkpoint: step {best.get('step')} by "
                   f"{best.get('metric')} = {value} on {where}.")
    return out


def inside_model(doc: Doc, L: Layout, fig_dir: Path, records: int = 40) -> None:
    """The final model's attention grid and one layer's neurons (phi1.inspect), on a small corpus slice."""
    from itertools import islice

    from phi1.data.records import iter_records
    from phi1.inspect.quicklook import report_blocks

    src = L.stage("decontaminate") if _manifest(L.stage("decontaminate")) else None
    texts = [r.get("text", "") for r in islice(iter_records(src, skip_bad_lines=True), records)] if src else []
    for kind, *args in report_blocks(L.model, texts, fig_dir):
        getattr(doc, kind)(*args)


def build_report(run_dir: str | Path) -> Path:
    L = Layout(Path(run_dir))
    if not L.root.is_dir():
        raise Phi1Error(f"{run_dir}: run directory not found")
    marks = [m for m in (_json(p) for p in (L.root / ".stages").glob("*.json")) if m]
    # Finished stages in the order they finished (a stage rerun after an edit comes after what it
    # reads); the report stage itself is left out so that `phi1 report` rewrites the same report.
    stages = sorted((m for m in marks if m.get("status", "done") == "done" and m.get("name") != "report"),
                    key=lambda m: m.get("finished", 0))
    if not stages and not L.data_pipeline.is_file():  # a run rebuilt by hand has its configs, not stage records
        raise Phi1Error(f"{run_dir}: no finished stages (.stages/*.json) and no configs/data.yaml; is this a phi1 "
                        "demo run directory?")
    fig_dir = L.root / "figures"
    fig_dir.mkdir(exist_ok=True)
    meta = _json(L.root / "demo.json") or {}
    doc = Doc(f"phi1 run report: {meta.get('name', L.root.name)}")
    total = sum(s.get("seconds", 0) for s in stages)
    doc.p(f"Run directory: {L.root.resolve()}. Device: {meta.get('device', '?')}. "
          f"Stages finished: {len(stages)}; wall time of the stages: {total / 60:.1f} min.")

    ev = eval_results(L.eval)
    curves, train_sum = loss_curves(L, fig_dir)
    doc.h("Headline")
    doc.table(["metric", "value"], [
        ["HumanEval pass@1 (greedy)", _fmt(ev["pass@1"]) + (f" on {ev['tasks']} tasks" if ev["tasks"] else "")],
        ["HumanEval solution loss (nats/token)", _fmt(ev["solution_loss"])],
        ["pretrain validation loss", _fmt(train_sum.get("pretrain", {}).get("final_val_loss"))],
        ["finetune validation loss", _fmt(train_sum.get("finetune", {}).get("final_val_loss"))],
        ["model", str(L.model) if L.model.exists() else "-"],
    ])

    doc.h("Data funnel")
    rows = funnel_rows(L)
    if rows:
        doc.table(["stage", "records in", "kept", "dropped (reason: count)", "M chars out", "≈ tokens out", "tasks"],
                  rows)
        doc.p("Every data stage is a datatrove pipeline (`phi1 data run " + str(L.data_pipeline) + "`); counts "
              "come from each stage's manifest.json. Token counts are estimated at the packed corpus's "
              "characters per token.")
    else:
        doc.p("No data-stage reports found.")

    hist, top, bottom, cut = score_histogram(L, fig_dir)
    doc.h("Educational value")
    if hist:
        doc.image(hist, "classifier scores of every deduplicated document; the dashed line is the filter's cut")
        ann = _manifest(L.stage("annotate")) or {}
        labels = {k.rsplit("/", 1)[1]: v for k, v in ann.get("counts", {}).items()
                  if k.rsplit("/", 1)[1].startswith("label_")}
        if labels:
            doc.p("Annotation (records per label): " + json.dumps(dict(sorted(labels.items()))))
        for title, recs in (("Highest-scored (kept)", top), ("Lowest-scored (dropped)", bottom)):
            doc.h(title, 3)
            for r in recs:
                m = r.get("meta", {})
                doc.p(f"{m.get('path') or r.get('id')} — score {m.get('edu_score'):.3f}")
                doc.code(_snippet(r.get("text", "")), "python")
    else:
        doc.p("No scored records.")

    doc.h("Decontamination")
    dec = _manifest(L.stage("decontaminate"))
    hits = []
    for r in _rejected(L.stage("decontaminate")):
        for h in (r.get("meta", {}).get("contamination") or [])[:1]:
            hits.append({"record": r.get("id"), **h})
    if hits:
        doc.table(["record", "benchmark task", "method", "score"],
                  [[h.get("record"), h.get("task_id") or h.get("task"), h.get("method"),
                    _fmt(h.get("score"), 3)] for h in hits[:50]])
        if len(hits) > 50:
            doc.p(f"... and {len(hits) - 50} more (see {L.stage('decontaminate') / 'rejected'}).")
    else:
        doc.p("No benchmark overlap found." if dec else "No decontamination report.")

    doc.h("Training")
    if curves:
        doc.image(curves, "training and validation loss")
    doc.table(["stage", "steps", "final train loss", "final val loss", "tokens/s", "MFU"],
              [[k, v["steps"], _fmt(v["final_train_loss"]), _fmt(v["final_val_loss"]),
                _fmt(v["tokens_per_s"], 0), _fmt(v["mfu"], 3) if v["mfu"] is not None else "- (CPU)"]
               for k, v in train_sum.items()])

    for line in checkpoint_choices(L):
        doc.p(line)

    doc.h("Evaluation")
    doc.table(["benchmark", "metric", "value"], [
        ["HumanEval", "pass@1 (greedy)", _fmt(ev["pass@1"])],
        ["HumanEval", "solution loss", _fmt(ev["solution_loss"])],
        *[["HumanEval", f"failures: {k}", v] for k, v in ev["kinds"].items()],
    ])

    doc.h("Inside the model")
    inside_model(doc, L, fig_dir)

    doc.h("Wall time per stage")
    doc.table(["stage", "seconds"], [[s.get("name"), _fmt(float(s.get("seconds", 0)), 1)] for s in stages])

    doc.h("Reproduce each stage by hand")
    doc.p("Each command is rendered from the config the stage ran with; run them in this order from a copy "
          "of `configs/` in a new directory (paths are relative to the run directory) to rebuild every output.")
    doc.code("\n".join(["cd RUN_DIRECTORY"] + [s["command"] for s in stages if s.get("command")]
                       + ["phi1 report ."]), "bash")

    md = doc.markdown(L.root)
    with report_plan(L.root):
        atomic_write_text(L.root / "report.md", md)
        atomic_write_text(L.root / "report.html", doc.html())
    return L.root / "report.md"


def report_files(run_dir: str | Path) -> dict[str, Path]:
    return {"the report": Path(run_dir) / "report.md", "the HTML report": Path(run_dir) / "report.html"}


def report_plan(run_dir: str | Path):
    """The report's files, for the one guard: a report.md that `phi1 report` did not write is never replaced."""
    from phi1.utils.writes import Write, WritePlan

    return WritePlan("report", [Write(k, v, named=False) for k, v in report_files(run_dir).items()],
                     inputs={"RUN_DIR": str(run_dir)}, updates=(run_dir,), overwrite_flag=False)
