"""`phi1 ablate`: the paper's core experiment at the user's scale.

The same model, the same token budget, trained on (a) unfiltered (deduplicated)
code and (b) the educational-value-filtered, decontaminated code (optionally
(c) filtered + synthetic textbooks), each evaluated identically: HumanEval
solution loss and pass@1, and validation loss on held-out filtered data.
"""

from __future__ import annotations

from pathlib import Path

from phi1.demo.config import DemoConfig
from phi1.demo.layout import Layout
from phi1.demo.pipeline import (data_stages, eval_stages, export_stage, pack_stage, tokenizer_stage,
                                train_config, train_stage)
from phi1.demo.runner import own_run_dir
from phi1.errors import ConfigError
from phi1.tokenizer import resolve_tokenizer
from phi1.utils.io import atomic_write_json, atomic_write_text

ARM_DATA = ("unfiltered", "filtered", "filtered+synthetic")


def run_ablation(cfg: DemoConfig, run_dir: Path, *, device: str = "cpu", log=print) -> Path:
    if not cfg.arms:
        raise ConfigError("ablation config: 'arms' is empty; list at least two arms, e.g. "
                          "[{name: unfiltered, data: unfiltered}, {name: filtered, data: filtered}]")
    for i, a in enumerate(cfg.arms):
        if a.data not in ARM_DATA:
            raise ConfigError(f"arms[{i}].data = {a.data!r}; allowed: {', '.join(ARM_DATA)}")
        if a.data == "filtered+synthetic":
            raise ConfigError(f"arms[{i}].data = filtered+synthetic needs synthetic textbooks: run `phi1 synth "
                              "textbooks` and add the file to corpus.paths of a filtered arm instead")
    with own_run_dir(Path(run_dir), "ablate"):  # a new dir or one of ours; locked while it runs
        return _run_ablation(cfg, Path(run_dir), device=device, log=log)


def _run_ablation(cfg: DemoConfig, run_dir: Path, *, device: str, log) -> Path:
    from phi1.utils.stagegraph import StageGraph

    L = Layout(run_dir)
    stages = data_stages(cfg, L)
    tokenizer = resolve_tokenizer(cfg.tokenizer.path, "tokenizer.path") if cfg.tokenizer.path else L.tokenizer
    tok_after: tuple[str, ...] = ()
    if not cfg.tokenizer.path:
        # One tokenizer for every arm, trained on the unfiltered corpus so no arm is favoured.
        stages.append(tokenizer_stage(L, "tokenizer", [L.stage("dedup")], cfg.tokenizer.vocab_size, ("dedup",),
                                      "train the shared tokenizer"))
        tok_after = ("tokenizer",)
    # Held-out textbook-quality data: the val split of the filtered shards, used by every arm.
    val = L.shards / "filtered"
    sources = {"unfiltered": (L.stage("dedup"), "dedup"), "filtered": (L.stage("decontaminate"), "decontaminate")}
    for key in dict.fromkeys([a.data for a in cfg.arms] + ["filtered"]):
        src, stage = sources[key]
        what = f"pack {key} shards" + (" (held-out set)" if key not in {a.data for a in cfg.arms} else "")
        stages.append(pack_stage(L, f"pack-{key}", tokenizer, [src], L.shards / key, cfg.pack.val_fraction,
                                 (stage,) + tok_after, what))
    for arm in cfg.arms:
        name = f"arm-{arm.name or arm.data}"
        data = train_config(cfg.pretrain, L, name, init=cfg.model_preset, tokenizer=tokenizer,
                            shards=L.shards / arm.data,
                            extra={"run.device": device, "data.val": [{"path": str(val), "weight": 1.0}]})
        stages.append(train_stage(L, f"train-{name}", data, title=f"train arm {name}",
                                  after=(f"pack-{arm.data}", "pack-filtered") + tok_after, run_name=name))
        model_dir = L.root / "models" / name
        stages.append(export_stage(L, f"export-{name}", name, "latest", model_dir, (f"train-{name}",),
                                   f"export {name}"))
        stages += eval_stages(cfg, L, model_dir, L.eval / name, device, (f"export-{name}",))
    StageGraph(stages, L.root / ".stages", log=log).run()
    return write_comparison(cfg, L)


def write_comparison(cfg: DemoConfig, L: Layout) -> Path:
    from phi1.demo.doc import Doc
    from phi1.demo.report import eval_results
    from phi1.utils.io import read_jsonl

    rows, table = [], []
    for arm in cfg.arms:
        name = f"arm-{arm.name or arm.data}"
        ev = eval_results(L.eval / name)
        metrics = L.run_dir(name) / "metrics.jsonl"
        recs = list(read_jsonl(metrics, strict=False)) if metrics.exists() else []
        val = [r["val_loss"] for r in recs if "val_loss" in r]
        tokens = max((r.get("tokens", 0) for r in recs), default=0)
        row = {"arm": name, "data": arm.data, "tokens": tokens, "solution_loss": ev["solution_loss"],
               "pass@1": ev["pass@1"], "val_loss_filtered_heldout": val[-1] if val else None,
               "val_curve": [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]}
        rows.append(row)
        table.append([name, arm.data, tokens, _f(row["solution_loss"]), _f(row["pass@1"]),
                      _f(row["val_loss_filtered_heldout"])])
    atomic_write_json(L.root / "ablation.json", {"arms": rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in rows:
        if r["val_curve"]:
            axes[0].plot(*zip(*r["val_curve"]), "o-", label=r["arm"])
    axes[0].set_title("validation loss on held-out filtered data")
    axes[0].set_xlabel("step")
    axes[0].legend()
    names = [r["arm"] for r in rows]
    axes[1].bar(names, [r["solution_loss"] or 0 for r in rows], color=["#c44e52", "#4c72b0", "#55a868"][: len(rows)])
    axes[1].set_title("HumanEval solution loss (lower is better)")
    fig.tight_layout()
    fig_dir = L.root / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig.savefig(fig_dir / "ablation.png", dpi=110)
    plt.close(fig)
    doc = Doc("phi1 ablation: does textbook-quality filtering help at equal tokens?")
    doc.table(["arm", "data", "tokens seen", "HumanEval solution loss", "pass@1", "val loss (held-out filtered)"],
              table)
    doc.image(fig_dir / "ablation.png", "validation curves and solution loss per arm")
    atomic_write_text(L.root / "ablation.md", doc.markdown(L.root))
    atomic_write_text(L.root / "ablation.html", doc.html())
    return L.root / "ablation.md"


def _f(v):
    return "-" if v is None else f"{v:.4f}"


__all__ = ["run_ablation", "write_comparison"]
