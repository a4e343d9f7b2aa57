"""`phi1 sweep`: the TinyStories study (Eldan & Li, 2023) end to end, over model width and depth.

Stories (`phi1 synth stories` JSONL, or TinyStories' public Parquet / JSON files: a `text` field)
-> a small BPE tokenizer -> token shards with held-out stories -> one model per (width, depth) of
the recipe's grid that falls in its parameter range, each trained by `phi1 train` -> for each model:
validation loss, the loss of the true ending of held-out stories given their beginning (completion
consistency without a judge) and, with a judge endpoint, `phi1 eval judge`'s grammar / creativity /
consistency grades of its continuations of those held-out beginnings -> `sweep.json`, `sweep.md` and
`sweep.png`: the judge's three scores and the loss against parameters, one line per depth (the
TinyStories paper's figure). Every step resumes: a rerun skips what is done and grades only what is
missing. The recipe (`recipes/tinystories.yaml`) holds a `toy` scale for a CPU and a `paper` one
(1M-33M parameters) for a GPU.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phi1.utils.io import atomic_write_json, atomic_write_text, directory_commit, read_jsonl, temp_beside, write_jsonl
from phi1.errors import ConfigError, Phi1Error
from phi1.utils.config import build, read_yaml_mapping

OWNER = "sweep"


@dataclass
class ScaleSection:
    widths: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    head_dim: int = 64
    vocab_size: int = 2048  # the BPE trained on the stories
    continuation_tokens: int = 200  # tokens each model writes after a held-out beginning, for the judge
    min_params: float = 0.0
    max_params: float = 1e12
    set: dict[str, Any] = field(default_factory=dict)  # training overrides at this scale, as `phi1 train --set`


@dataclass
class JudgeSection:
    temperature: float = 0.0  # of the models' continuations (0 = greedy)
    concurrency: int = 8  # judge requests in flight


@dataclass
class SweepConfig:
    name: str = "sweep"
    stories: list[str] = field(default_factory=list)
    val_fraction: float = 0.05
    beginnings: int = 24
    recipe: str = "tiny-pretrain.yaml"
    set: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, ScaleSection] = field(default_factory=dict)
    judge: JudgeSection = field(default_factory=JudgeSection)


def load_sweep_config(path: str | os.PathLike) -> SweepConfig:
    from phi1.demo.config import RECIPES

    p = Path(path)
    if not p.exists() and (RECIPES / p).exists():
        p = RECIPES / p
    raw = read_yaml_mapping(p, "sweep recipe")
    scales = raw.pop("scales", None) or {}
    if not isinstance(scales, dict):
        raise ConfigError(f"{p}: scales: expected a mapping of scale name -> {{widths, depths, ...}}")
    cfg = build(SweepConfig, raw, str(p))
    cfg.scales = {k: build(ScaleSection, v or {}, f"{p}.scales.{k}") for k, v in scales.items()}
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"{p}.val_fraction = {cfg.val_fraction}: must be in (0, 1)")
    for k, s in cfg.scales.items():
        if not s.widths or not s.depths or min(s.widths + s.depths) < 1:
            raise ConfigError(f"{p}.scales.{k}: widths and depths must be non-empty lists of positive integers")
        bad = [w for w in s.widths if w % min(s.head_dim, w)]
        if bad:
            raise ConfigError(f"{p}.scales.{k}.widths: {bad} are not multiples of head_dim {s.head_dim}")
    return cfg


# ---- stories ----------------------------------------------------------------------------------------

def iter_stories(paths: list[str]):
    """Story texts from JSONL / .jsonl.gz / record directories (`text`), Parquet (a `text` column) and
    JSON files holding a list of objects with `text` (the public TinyStories layouts)."""
    from phi1.tokenizer import iter_texts

    for src in paths:
        p = Path(src)
        if not p.exists():
            raise Phi1Error(f"stories: {p}: not found")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() and not (p / "manifest.json").exists() \
            else [p]
        for f in files:
            if f.suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(f)
                if "text" not in table.column_names:
                    raise Phi1Error(f"{f}: no `text` column (columns: {', '.join(table.column_names)})")
                yield from (t for t in table.column("text").to_pylist() if isinstance(t, str))
            elif f.suffix == ".json":
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise Phi1Error(f"{f}: not a JSON file ({exc}); give JSONL, Parquet or a JSON list") from None
                if not isinstance(data, list):
                    raise Phi1Error(f"{f}: expected a JSON list of objects with a `text` field")
                yield from (r["text"] for r in data if isinstance(r, dict) and isinstance(r.get("text"), str))
            elif f.name.endswith((".jsonl", ".jsonl.gz")) or f.is_dir():
                yield from iter_texts([f])


def split_story(text: str) -> tuple[str, str] | None:
    """(beginning, ending) at a sentence end near 40% of the story; None for a one-sentence story."""
    ends = [m.end() for m in re.finditer(r"[.!?][\"']?(?=\s)", text)]
    ends = [e for e in ends if e < len(text.rstrip()) - 1]
    if not ends:
        return None
    cut = min(ends, key=lambda e: abs(e - 0.4 * len(text)))
    return text[:cut], text[cut:]


# ---- the grid ---------------------------------------------------------------------------------------

def grid(scale: ScaleSection, vocab: int, seq_len: int) -> list[dict]:
    """The models of a scale: every (width, depth) whose parameter count is in [min, max]."""
    from phi1.model.phi.config import PhiConfig

    out = []
    for d in scale.depths:
        for w in scale.widths:
            heads = max(1, w // scale.head_dim)
            shape = dict(hidden_size=w, num_hidden_layers=d, num_attention_heads=heads, intermediate_size=4 * w,
                         max_position_embeddings=max(seq_len, 1024))  # room for the judge's continuations
            n = PhiConfig.from_preset("micro", vocab_size=vocab, **shape).num_parameters()
            if scale.min_params <= n <= scale.max_params:
                out.append({"name": f"w{w}-d{d}", "width": w, "depth": d, "params": n, "shape": shape})
    if not out:
        raise ConfigError(f"scale: no (width, depth) of the grid has between {scale.min_params:.3g} and "
                          f"{scale.max_params:.3g} parameters")
    return sorted(out, key=lambda r: r["params"])


# ---- the run: one stage graph (phi1.utils.stagegraph), like phi1 data run, demo and ablate ----------

def _clear(*paths: Path):
    """A stage's `clear`: remove what an earlier run of it wrote (it reruns because its config, or
    a stage it reads, changed)."""
    import shutil

    def clear() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return clear


def _check_stories(paths: list[str]) -> None:
    if not paths:
        raise Phi1Error("stories: none given; pass --stories FILE... (`phi1 synth stories` JSONL, TinyStories "
                        "Parquet or JSON) or set the recipe's stories")
    for src in paths:
        if not Path(src).exists():
            raise Phi1Error(f"stories: {src}: not found")


def _tokenizer(texts: Path, vocab_size: int, out: Path) -> None:
    from phi1.tokenizer import train_tokenizer

    with directory_commit(out, replace=True) as tmp:
        train_tokenizer([texts], vocab_size=vocab_size, out_dir=tmp)


def _shards(tok: Path, stories: Path, out: Path, val_fraction: float) -> None:
    from phi1.data.pack import pack

    pack(tok, [stories], out, workers=1, val_fraction=val_fraction)  # resumable, its manifest written last


def write_stories(cfg: SweepConfig, data: Path, log) -> None:
    """data/stories.jsonl, data/train-stories.jsonl (what the tokenizer reads: no held-out story) and
    data/beginnings.jsonl (held-out beginnings and their true endings)."""
    from phi1.data.pack import is_val

    data.mkdir(parents=True, exist_ok=True)
    stories = data / "stories.jsonl"
    n = write_jsonl(stories, ({"id": f"story/{i}", "text": t} for i, t in enumerate(iter_stories(cfg.stories))
                              if t.strip()))
    if n == 0:
        raise Phi1Error(f"stories {' '.join(cfg.stories) or '(none given)'}: no story texts found; give "
                        "`phi1 synth stories` JSONL or TinyStories Parquet/JSON files (a `text` field)")
    log(f"sweep: {n} stories -> {stories}")
    write_jsonl(data / "train-stories.jsonl", (r for r in read_jsonl(stories) if not is_val(r["text"], cfg.val_fraction)))
    rows = []
    for r in read_jsonl(stories):
        parts = split_story(r["text"]) if is_val(r["text"], cfg.val_fraction) else None
        if parts:
            rows.append({"id": r["id"], "prompt": parts[0], "ending": parts[1]})
    if not rows:
        raise Phi1Error(f"{stories}: no held-out story of two or more sentences; give more stories or raise "
                        "val_fraction")
    write_jsonl(data / "beginnings.jsonl", rows[: cfg.beginnings])


def train_one(cfg: SweepConfig, scale: ScaleSection, m: dict, out: Path, tok: Path, shards: Path, device: str) -> Path:
    """Train one model of the grid (resuming its run when one was killed); its final model directory."""
    from phi1.demo.pipeline import checkpoint_model_dir
    from phi1.model.create import init_model_dir
    from phi1.train.config import load_config
    from phi1.train.trainer import train

    init = out / "models" / m["name"]
    init.parent.mkdir(parents=True, exist_ok=True)
    if not (init / "config.json").exists():
        init_model_dir("micro", tok, init, seed=0, overwrite=True, **m["shape"])
    base = training_recipe(cfg, scale, {"run.name": m["name"], "run.out_dir": str(out / "runs"), "run.device": device,
                                        "model.init": str(init), "model.tokenizer": str(tok),
                                        "data.train": [{"path": str(shards), "weight": 1.0}]})
    path = out / "configs" / f"{m['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# written by phi1 sweep; rerun with: phi1 train {path}\n"
                      + yaml.safe_dump(base, sort_keys=False))
    train(load_config(path))
    return checkpoint_model_dir(out / "runs" / m["name"], "latest")


def evaluate_one(m: dict, model_dir: Path, run_dir: Path, beginnings: Path, out: Path, cfg: SweepConfig,
                 sc: ScaleSection, device: str, judge: dict | None) -> dict:
    """val_loss (last eval), ending_loss (nats/token of held-out endings), the judge's mean grades."""
    from phi1.eval.loss import solution_loss
    from phi1.eval.problems import Problem
    from phi1.model import load_for_inference

    val = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    rows = list(read_jsonl(beginnings))
    model, tok = load_for_inference(model_dir, device=device, dtype="float32")
    probs = [Problem(task_id=r["id"], prompt=r["prompt"], test="", canonical_solution=r["ending"], benchmark="stories")
             for r in rows]
    res = {**{k: m[k] for k in ("name", "width", "depth", "params")}, "val_loss": val[-1] if val else None,
           "ending_loss": round(solution_loss(model, tok, probs), 6), "model": str(model_dir)}
    del model
    if judge:
        from phi1.eval.judge import JudgeConfig, run_judge

        jc = JudgeConfig(model_dir=str(model_dir), task="stories", judge_endpoint=judge["endpoint"],
                         judge_model=judge["model"], api_key_env=judge.get("api_key_env"),
                         out=str(out / "judge" / m["name"]), prompts=str(beginnings),
                         concurrency=cfg.judge.concurrency, max_new_tokens=sc.continuation_tokens,
                         temperature=cfg.judge.temperature, device=device)
        summary = run_judge(jc)
        for k in ("grammar", "creativity", "consistency"):
            res[k] = summary["scores"][k]["bootstrap"]["mean"]
        res["judge_failures"] = summary["judge_failures"]
    return res


def sweep_stages(cfg: SweepConfig, sc: ScaleSection, scale: str, out: Path, device: str, judge: dict | None,
                 log) -> list:
    """The sweep as stages: stories -> tokenizer -> shards -> (train, evaluate) per model -> report.

    Each stage's config is what decides its output, so editing the recipe reruns exactly the stages it
    touches and everything downstream (a new vocab_size: the tokenizer, the shards and every model)."""
    from phi1.model.family import preset_vocab_size
    from phi1.tokenizer import load_tokenizer
    from phi1.utils.stagegraph import Stage

    data, tok, shards = out / "data", out / "tokenizer", out / "shards"
    beginnings = data / "beginnings.jsonl"
    stages = [
        Stage("stories", "sweep-stories", {"stories": list(cfg.stories), "val_fraction": cfg.val_fraction,
                                           "beginnings": cfg.beginnings},
              run=lambda fp: write_stories(cfg, data, log), inputs=tuple(cfg.stories), clear=_clear(data),
              validate=lambda: _check_stories(cfg.stories), title="stories, held-out beginnings"),
        Stage("tokenizer", "sweep-tokenizer", {"vocab_size": sc.vocab_size}, after=("stories",),
              run=lambda fp: _tokenizer(data / "train-stories.jsonl", sc.vocab_size, tok),
              clear=_clear(tok), title="the stories' BPE tokenizer"),
        Stage("shards", "sweep-shards", {"val_fraction": cfg.val_fraction}, after=("stories", "tokenizer"),
              run=lambda fp: _shards(tok, data / "stories.jsonl", shards, cfg.val_fraction),
              clear=_clear(shards), title="token shards"),
    ]
    seq_len = int((training_recipe(cfg, sc).get("data") or {}).get("seq_len", 2048))

    def models() -> list[dict]:  # the vocab is the trained tokenizer's: known once it exists
        return grid(sc, preset_vocab_size("micro", len(load_tokenizer(tok))), seq_len)

    probe = grid(sc, preset_vocab_size("micro", sc.vocab_size), seq_len)  # the grid's names and shapes
    log(f"sweep {cfg.name} ({scale}): {len(probe)} models, {probe[0]['params'] / 1e6:.2f}M to "
        f"{probe[-1]['params'] / 1e6:.2f}M parameters")
    results = out / "results"

    def model_of(name: str) -> dict:
        return next(m for m in models() if m["name"] == name)

    for guess in probe:
        name = guess["name"]

        def outside(name=name) -> str | None:  # the trained tokenizer's vocab moved it out of the range
            return None if any(m["name"] == name for m in models()) else "outside the parameter range"

        def train_it(fp, name=name) -> dict:
            m = model_of(name)
            log(f"sweep: {name} ({m['params'] / 1e6:.2f}M parameters)")
            return {"model": str(train_one(cfg, sc, m, out, tok, shards, device))}

        def evaluate(fp, name=name) -> dict:
            from phi1.demo.pipeline import checkpoint_model_dir

            m = model_of(name)
            res = evaluate_one(m, checkpoint_model_dir(out / "runs" / name, "latest"), out / "runs" / name,
                               beginnings, out, cfg, sc, device, judge)
            atomic_write_json(results / f"{name}.json", res)
            if res.get("judge_failures"):  # not done: a rerun grades only what is missing
                return {"incomplete": f"{res['judge_failures']} judge requests failed; rerun to grade them"}
            return None

        train_cfg = {"shape": guess["shape"], "recipe": training_recipe(cfg, sc), "device": device}
        stages.append(Stage(f"train-{name}", "sweep-train", train_cfg, after=("tokenizer", "shards"), run=train_it,
                            clear=_clear(out / "models" / name, out / "runs" / name, out / "configs" / f"{name}.yaml"),
                            skip=outside, title=f"train {name}"))
        eval_cfg = {"judge": {k: v for k, v in (judge or {}).items() if k != "api_key_env"},
                    "judge_settings": cfg.judge, "continuation_tokens": sc.continuation_tokens}
        stages.append(Stage(f"eval-{name}", "sweep-eval", eval_cfg, after=("stories", f"train-{name}"), run=evaluate,
                            clear=_clear(results / f"{name}.json", out / "judge" / name), skip=outside,
                            title=f"evaluate {name}"))

    def report(fp) -> None:
        rows = [json.loads((results / f"{m['name']}.json").read_text()) for m in models()]
        result = {"name": cfg.name, "scale": scale, "judge": (judge or {}).get("model"), "models": rows}
        atomic_write_json(out / "sweep.json", result)
        atomic_write_text(out / "sweep.md", format_table(result))
        plot(rows, out / "sweep.png", cfg.name)

    results.mkdir(parents=True, exist_ok=True)
    stages.append(Stage("report", "sweep-report", {"name": cfg.name, "scale": scale},
                        after=tuple(s.name for s in stages if s.name.startswith("eval-")), run=report,
                        inputs=(results,),  # regraded results (a rerun after judge failures) rebuild it
                        title="sweep.json, sweep.md, sweep.png"))
    return stages


def run_sweep(cfg: SweepConfig, out: str | os.PathLike, scale: str = "toy", device: str = "cpu",
              judge: dict | None = None, log=print) -> dict:
    """Run (or resume) the sweep into `out`; returns {"models": [row per model], ...}."""
    from phi1.demo.runner import own_run_dir
    from phi1.utils.stagegraph import StageGraph

    if scale not in cfg.scales:
        raise ConfigError(f"--scale {scale!r}: the recipe has scales {', '.join(cfg.scales) or '(none)'}")
    sc = cfg.scales[scale]
    out = Path(out)
    with own_run_dir(out, OWNER):
        StageGraph(sweep_stages(cfg, sc, scale, out, device, judge, log), out / ".stages",
                   log=lambda msg: log(msg)).run()
        return json.loads((out / "sweep.json").read_text())


def training_recipe(cfg: SweepConfig, sc: ScaleSection, extra: dict | None = None) -> dict:
    """The training recipe with the sweep's `set`, the scale's `set` and `extra` applied (a raw dict)."""
    from phi1.demo.config import resolve_recipe
    from phi1.train.config import set_fields

    base = read_yaml_mapping(resolve_recipe(cfg.recipe), "training recipe")
    return set_fields(base, {**cfg.set, **sc.set, **(extra or {})})


KEYS = ("grammar", "creativity", "consistency")


def format_table(result: dict) -> str:
    lines = [f"# phi1 sweep {result['name']} ({result['scale']})", "",
             "| model | width | depth | parameters | val loss | ending loss | grammar | creativity | consistency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        f = lambda v, nd=3: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['width']} | {r['depth']} | {r['params'] / 1e6:.2f}M | {f(r['val_loss'])} | "
                     f"{f(r['ending_loss'])} | " + " | ".join(f(r.get(k), 2) for k in KEYS) + " |")
    lines += ["", "ending loss: nats per token of the true ending of held-out stories given their beginning; "
              "grammar / creativity / consistency: the judge's mean grade (1-10) of each model's continuations "
              "of those beginnings" + ("" if result["judge"] else " (no judge given: not graded)") + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """The TinyStories figure: each judge score and the loss against parameters, one line per depth."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [k for k in KEYS if any(r.get(k) is not None for r in rows)] + ["val_loss", "ending_loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for depth in sorted({r["depth"] for r in rows}):
            pts = sorted((r["params"], r[key]) for r in rows if r["depth"] == depth and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"{depth} layer{'s' if depth > 1 else ''}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = temp_beside(path)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
