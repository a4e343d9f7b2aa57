"""`phi1 demo`: collect → dedup → score → filter → decontaminate → mine → tokenizer → pack →
pretrain → finetune → evaluate → report, each stage one `phi1` command, resumable."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from phi1.demo.config import DemoConfig, resolve_recipe
from phi1.demo.runner import Stage, StageRunner, own_run_dir
from phi1.errors import Phi1Error
from phi1.tokenizer import resolve_tokenizer
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import atomic_write_text
from phi1.utils.safety import clean_stale_temps, temp_prefix


class Layout:
    """Where every stage of a run directory writes. The data stages are one `phi1 data run` pipeline
    (`configs/data.yaml`) whose stage directories are `data/<stage>/` (shards + manifest.json)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = d = self.root / "data"
        self.raw, self.dedup = d / "collect", d / "dedup"
        self.annotated, self.classifier = d / "annotate", d / "train" / "classifier.joblib"
        self.scored, self.filtered, self.clean = d / "score", d / "filter", d / "decontaminate"
        self.exercises = d / "exercises"
        self.synth = d / "synth"
        self.tokenizer = self.root / "tokenizer"
        self.shards = self.root / "shards"
        self.configs = self.root / "configs"
        self.runs = self.root / "runs"
        self.model = self.root / "model"
        self.eval = self.root / "eval"
        self.data_pipeline = self.configs / "data.yaml"

    def run_dir(self, name: str) -> Path:
        return self.runs / name


# The demo's data stages: (demo stage name, pipeline stage name, what it does).
DATA_STAGES = [
    ("collect", "collect", "collect the corpus"),
    ("dedup", "dedup", "deduplicate (exact + datatrove MinHash)"),
    ("annotate", "annotate", "label educational value"),
    ("classify-train", "train", "train the quality classifier (random forest)"),
    ("classify-score", "score", "score every document"),
    ("filter", "filter", "keep the most educational documents"),
    ("decontaminate", "decontaminate", "decontaminate against benchmarks"),
    ("mine-exercises", "exercises", "mine docstring exercises"),
]


def data_pipeline(cfg: DemoConfig, L: Layout, workers: int = 0, endpoint: str | None = None, model: str | None = None,
                  api_key_env: str | None = None) -> dict:
    """The demo's data recipe as a `phi1 data run` pipeline (the same steps as recipes/data-demo.yaml).
    The judge is the recipe's `annotate_endpoint`, else the demo's `--endpoint` (its `--model` and
    `--api-key-env` too), unless the recipe says `annotator: rules`."""
    c, d = cfg.corpus, cfg.data
    annotate: dict = {"name": "annotate", "sample": d.annotate_sample}
    if d.annotator:
        annotate["annotator"] = d.annotator
    judge = d.annotate_endpoint or (endpoint if d.annotator != "rules" else None)
    if judge:
        annotate.update(endpoint=judge, model=d.annotate_model or model or "default",
                        api_key_env=api_key_env or d.annotate_api_key_env, max_tokens=d.annotate_max_tokens)
    keep = {"keep_tokens": d.filter_keep_tokens} if d.filter_keep_tokens else {"top_fraction": d.filter_top_fraction}
    return {
        "description": f"phi1 demo {cfg.name}: the data half of the recipe",
        "workdir": str(L.data), "executor": "local", "workers": workers, "tasks": 0,
        "stages": [
            {"name": "collect", "sources": [str(p) for p in c.paths], "python_stdlib": c.python_stdlib,
             "site_packages": c.site_packages, "exclude": list(c.exclude), "max_bytes": c.max_bytes,
             "limit_bytes": int(c.limit_mb * 1e6)},
            {"name": "dedup", "threshold": d.dedup_threshold},
            annotate,
            {"name": "train", "kind": "classify-train", "input": "annotate", "encoder": d.encoder,
             "head": d.classifier_head, "threshold": d.label_threshold, "n_estimators": d.n_estimators},
            {"name": "score", "kind": "classify-score", "input": "dedup", "classifier": "@train"},
            {"name": "filter", **keep},
            {"name": "decontaminate", "benchmarks": list(d.benchmarks)},
            {"name": "exercises", "kind": "mine-exercises", "input": "dedup", "benchmarks": list(d.benchmarks)},
        ],
    }


def data_stages(cfg: DemoConfig, L: Layout, workers: int = 0, endpoint: str | None = None, model: str | None = None,
                api_key_env: str | None = None) -> list[Stage]:
    """The data half of the recipe: raw code to clean, decontaminated, scored documents + exercises,
    each demo stage one `phi1 data run configs/data.yaml --until STAGE` (earlier pipeline stages are
    skipped by their fingerprint, so each runs once)."""
    text = ("# written by phi1 demo; the data half of the run. Rerun with: phi1 data run " + str(L.data_pipeline)
            + "\n" + yaml.safe_dump(data_pipeline(cfg, L, workers, endpoint, model, api_key_env), sort_keys=False))

    def write() -> None:
        L.data_pipeline.parent.mkdir(parents=True, exist_ok=True)
        if not L.data_pipeline.exists() or L.data_pipeline.read_text() != text:
            atomic_write_text(L.data_pipeline, text)

    return [Stage(name, ["data", "run", L.data_pipeline, "--until", stage, "--quiet"], what,
                  [L.data / stage / "manifest.json"], prepare=write)
            for name, stage, what in DATA_STAGES]


def synth_stages(cfg: DemoConfig, L: Layout, endpoint: str | None, model: str | None,
                 api_key_env: str | None) -> list[Stage]:
    if not endpoint:
        return []
    common = ["--endpoint", endpoint, "--model", model or "default", "--concurrency", cfg.synth.concurrency]
    if api_key_env:
        common += ["--api-key-env", api_key_env]
    out = []
    for kind, count in (("textbooks", cfg.synth.textbooks), ("exercises", cfg.synth.exercises)):
        if count <= 0:
            continue
        raw, valid = L.synth / f"{kind}.jsonl", L.synth / f"{kind}.valid.jsonl"
        out.append(Stage(f"synth-{kind}", ["synth", kind, *common, "--count", count, "--out", raw],
                         f"generate synthetic {kind}", [raw]))
        out.append(Stage(f"validate-{kind}", ["synth", "validate", "--kind", kind, "--input", raw, "--out", valid],
                         f"validate synthetic {kind}", [valid]))
    return out


def stage_recipe(cfg_stage, sets: dict | None = None, extra: dict | None = None) -> dict:
    """A stage's training recipe with, in this order, the demo's paths (`sets`), the demo recipe's
    `set:` and `extra` (the device) applied."""
    from phi1.train.config import set_fields

    base = read_yaml_mapping(resolve_recipe(cfg_stage.recipe), "training recipe")
    return set_fields(base, {**(sets or {}), **cfg_stage.set, **(extra or {})})


def check_eval_data(cfg_stage, what: str) -> None:
    """A stage whose checkpoint selection reads a file (MBPP, held-out exercises) fails at the start of
    the demo, not hours later when that stage begins, if the file is not there."""
    args = ((stage_recipe(cfg_stage).get("eval") or {}).get("callback_args") or {})
    data = args.get("data")
    if isinstance(data, str) and not Path(data).exists():
        raise Phi1Error(f"{what}: eval.callback_args.data = {data!r}: file not found; the best checkpoint is chosen "
                        f"on it ({args.get('benchmark', 'humaneval')}); provide it, or choose by validation loss: "
                        f"{{eval.callback: null, eval.best_metric: val_loss, eval.best_mode: min}} in the demo "
                        f"recipe's {what}.set")


def write_train_config(cfg_stage, L: Layout, name: str, *, init: str, tokenizer: Path, shards: Path,
                       extra: dict | None = None) -> Path:
    """A complete training config for this run, written where the report's command points."""
    sets = {"run.name": name, "run.out_dir": str(L.runs), "model.init": init, "model.tokenizer": str(tokenizer),
            "data.train": [{"path": str(shards), "weight": 1.0}]}
    base = stage_recipe(cfg_stage, sets, extra)
    path = L.configs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# written by phi1 for run {L.root}; rerun with: phi1 train {path}\n"
                      + yaml.safe_dump(base, sort_keys=False))
    return path


def base_step(run_dir: Path) -> int | None:
    """The step of a pretraining run's base checkpoint (phi-1-base: step 24000 of 36000): the highest
    of its config's `checkpoint.keep_steps` that the run has; None when it keeps no such step."""
    from phi1.train.checkpoint import checkpoints_dir, list_steps

    try:
        keep = (read_yaml_mapping(Path(run_dir) / "config.yaml", "training config").get("checkpoint") or {})
    except Phi1Error:
        return None
    have = set(list_steps(checkpoints_dir(run_dir)))
    kept = [s for s in keep.get("keep_steps") or [] if s in have]
    return max(kept) if kept else None


def finetune_init(run_dir: Path) -> str:
    """model.init of the finetune: the pretraining run's base checkpoint as RUN@STEP, else its latest."""
    step = base_step(run_dir)
    return f"{run_dir}@{step}" if step is not None else str(checkpoint_model_dir(run_dir, "latest"))


def checkpoint_model_dir(run_dir: Path, which: str = "best") -> Path:
    """The HF model directory of a training run's best, base (see `base_step`) or latest checkpoint."""
    from phi1.train.checkpoint import checkpoints_dir, latest_checkpoint, read_best

    root = checkpoints_dir(run_dir)
    if which == "best":
        best = read_best(root)
        if best is not None and (root / f"step-{best['step']}" / "model").exists():
            return root / f"step-{best['step']}" / "model"
    if which == "base" and base_step(run_dir) is not None:
        return root / f"step-{base_step(run_dir)}" / "model"
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise Phi1Error(f"{run_dir}: no checkpoint found; did training finish?")
    return Path(latest) / "model"


def export_model(src: Path, dst: Path) -> None:
    """Copy a checkpoint's model directory to `dst`, whole or not at all.

    The copy goes to a temp directory named after this process (`.NAME.phi1-PID-*.tmp`), which
    a later run removes if this one dies; an existing `dst` is moved aside, not deleted, until
    the new copy is in place.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dst.parent, stem=dst.name)
    legacy = dst.with_name(f".{dst.name}.tmp")  # the temp name of phi1 before pid-named temps
    if legacy.is_dir() and not legacy.is_symlink():
        shutil.rmtree(legacy, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dst.name), suffix=".tmp", dir=dst.parent))
    old = None
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        os.chmod(tmp, 0o755 & ~_umask())  # mkdtemp makes 0700; give the usual mode
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(dst.name), suffix=".tmp", dir=dst.parent))
            os.replace(dst, old)  # onto the empty directory
        os.replace(tmp, dst)
    except BaseException:
        if old is not None and not dst.exists():
            os.replace(old, dst)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def training_stages(cfg: DemoConfig, L: Layout, *, pretrain_inputs: list[Path], finetune_inputs: list[Path],
                    device: str) -> list[Stage]:
    tok_inputs = [str(p) for p in pretrain_inputs]
    stages = []
    if cfg.tokenizer.path:  # a directory, or a hub name in the HF cache (the paper's: codegen-350M-mono)
        tokenizer = resolve_tokenizer(cfg.tokenizer.path, "tokenizer.path")
    else:
        tokenizer = L.tokenizer
        stages.append(Stage("tokenizer", ["tokenizer", "train", "--input", *tok_inputs, "--vocab-size",
                                          cfg.tokenizer.vocab_size, "--out", tokenizer],
                            "train the tokenizer", [tokenizer / "tokenizer.json"]))
    check_eval_data(cfg.finetune, "finetune")
    pre_shards, ft_shards = L.shards / "pretrain", L.shards / "finetune"
    stages.append(Stage("pack-pretrain", ["data", "pack", "--tokenizer", tokenizer, "--input", *pretrain_inputs,
                                          "--out", pre_shards, "--val-fraction", cfg.data.val_fraction],
                        "pack pretraining shards", [pre_shards / "manifest.json"]))
    stages.append(Stage("pack-finetune", ["data", "pack", "--tokenizer", tokenizer, "--input", *finetune_inputs,
                                          "--out", ft_shards, "--val-fraction", 0.05],
                        "pack finetuning shards", [ft_shards / "manifest.json"]))
    pre_cfg, ft_cfg = L.configs / "pretrain.yaml", L.configs / "finetune.yaml"
    dev = {"run.device": device}
    stages.append(Stage(
        "pretrain", ["train", pre_cfg], "pretrain on the filtered corpus", [],
        prepare=lambda: write_train_config(cfg.pretrain, L, "pretrain", init=cfg.model_preset, tokenizer=tokenizer,
                                           shards=pre_shards, extra=dev)))
    stages.append(Stage(
        "finetune", ["train", ft_cfg], "finetune on the exercises", [],
        prepare=lambda: write_train_config(cfg.finetune, L, "finetune", init=finetune_init(L.run_dir("pretrain")),
                                           tokenizer=tokenizer, shards=ft_shards, extra=dev)))
    stages.append(Stage("export", [], "export the best finetuned checkpoint", [L.model / "config.json"],
                        fn=lambda: export_model(checkpoint_model_dir(L.run_dir("finetune"), "best"), L.model),
                        describe=f"copy the best checkpoint of {L.run_dir('finetune')} to {L.model}"))
    return stages


def eval_stages(cfg: DemoConfig, L: Layout, model_dir: Path, out: Path, device: str) -> list[Stage]:
    e = cfg.eval
    he = ["eval", "humaneval", "--model", model_dir, "--out", out / "humaneval", "--max-new-tokens",
          e.max_new_tokens, "--batch-size", e.batch_size, "--device", device]
    loss = ["eval", "loss", "--model", model_dir, "--benchmark", "humaneval", "--out",
            out / "solution_loss.json", "--device", device]
    if e.max_problems:
        he += ["--max-problems", e.max_problems]
    if e.workers:
        he += ["--workers", e.workers]
    return [
        Stage(f"eval-humaneval-{out.name}", he, "HumanEval pass@1 (greedy)", [out / "humaneval" / "summary.json"]),
        Stage(f"eval-loss-{out.name}", loss, "HumanEval solution loss", [out / "solution_loss.json"]),
    ]


def run_demo(cfg: DemoConfig, run_dir: Path, *, device: str = "cpu", endpoint: str | None = None,
             model: str | None = None, api_key_env: str | None = None, log=print) -> Path:
    """Run (or resume) the demo in `run_dir`: a new or empty directory, or one a demo wrote.

    The directory is locked for the whole run: a second demo on it fails at once, naming the pid.
    """
    with own_run_dir(Path(run_dir), "demo"):
        return _run_demo(cfg, Path(run_dir), device=device, endpoint=endpoint, model=model,
                         api_key_env=api_key_env, log=log)


def _run_demo(cfg: DemoConfig, run_dir: Path, *, device: str, endpoint: str | None, model: str | None,
              api_key_env: str | None, log) -> Path:
    L = Layout(run_dir)
    runner = StageRunner(L.root, log=log)
    stages = data_stages(cfg, L, endpoint=endpoint, model=model, api_key_env=api_key_env)
    stages += synth_stages(cfg, L, endpoint, model, api_key_env)
    pre_inputs, ft_inputs = [L.clean], [L.exercises]
    if endpoint and cfg.synth.textbooks:
        pre_inputs.append(L.synth / "textbooks.valid.jsonl")
    if endpoint and cfg.synth.exercises:
        ft_inputs.append(L.synth / "exercises.valid.jsonl")
    stages += training_stages(cfg, L, pretrain_inputs=pre_inputs, finetune_inputs=ft_inputs, device=device)
    stages += eval_stages(cfg, L, L.model, L.eval, device)
    stages.append(Stage("report", ["report", L.root], "write the report", [L.root / "report.md"]))
    atomic_write_text(L.root / "demo.json", json.dumps({"name": cfg.name, "device": device,
                                                        "endpoint": endpoint, "model": model}, indent=2))
    runner.run(stages)
    return L.root
