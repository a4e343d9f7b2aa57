"""`phi1 demo`: collect → exact-dedup → dedup → annotate → classify → filter → decontaminate → mine → tokenizer →
pack → pretrain → finetune → export → evaluate → report, one stage graph (`phi1.utils.stagegraph`).

Every stage is a library call with a typed config; the graph fingerprints each config and what it
reads, so a rerun skips what is unchanged and reruns what an edit of the recipe touched (and
everything downstream). The report's reproduce-by-hand commands are rendered from the same configs
and run from the run directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import yaml

from phi1.demo.config import DemoConfig, resolve_recipe
from phi1.demo.layout import Layout
from phi1.demo.runner import own_run_dir
from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import ANY_MODEL
from phi1.tokenizer import resolve_tokenizer
from phi1.utils.config import read_yaml_mapping
from phi1.utils.io import atomic_write_text
from phi1.utils.io import directory_commit
from phi1.utils.safety import clean_stale_temps


def annotate_config(cfg: DemoConfig, endpoint: str | None = None, model: str | None = None,
                    api_key_env: str | None = None):
    """The recipe's annotate config; the judge is its `endpoint`, else the demo's `--endpoint` (its
    `--model` and `--api-key-env` too), unless the recipe says `annotator: rules`."""
    from dataclasses import replace

    a = cfg.data.annotate
    if a.endpoint is None and endpoint and a.annotator != "rules":
        a = replace(a, endpoint=endpoint, model=a.model or model or ANY_MODEL, api_key_env=api_key_env or a.api_key_env)
    return a


def data_pipeline(cfg: DemoConfig, L: Layout, workers: int = 0, endpoint: str | None = None, model: str | None = None,
                  api_key_env: str | None = None, *, workdir: str | None = None) -> dict:
    """The demo's data recipe as a `phi1 data run` pipeline (the same steps as recipes/data-demo.yaml):
    each stage's section of the recipe, as its config class has it. `workdir` is written as given
    (`data` for the file in RUN/configs/, run from the run directory)."""
    from phi1.demo.config import demo_kinds
    from phi1.utils.config import changed_fields

    stages = []
    for name, kind in demo_kinds().items():
        stage_cfg = annotate_config(cfg, endpoint, model, api_key_env) if name == "annotate" else getattr(cfg.data, name)
        entry = {"name": name}
        inp = kind.demo.input
        if inp is not None and inp != (stages[-1]["name"] if stages else None):
            entry["input"] = inp
        stages.append({**entry, **changed_fields(stage_cfg)})  # what the file must say
    return {"description": f"phi1 demo {cfg.name}: the data half of the recipe",
            "workdir": workdir or str(L.data), "executor": "local", "workers": workers, "tasks": 0, "stages": stages}


def data_stages(cfg: DemoConfig, L: Layout, workers: int = 0, endpoint: str | None = None, model: str | None = None,
                api_key_env: str | None = None) -> list:
    """The data half of the recipe: raw code to clean, decontaminated, scored documents + exercises,
    the stages of `phi1 data run` itself. `RUN/configs/data.yaml` is the same pipeline, written for
    running by hand from the run directory."""
    from phi1.data.pipeline import exec_config, parse_pipeline, pipeline_stages

    by_hand = data_pipeline(cfg, L, workers, endpoint, model, api_key_env, workdir="data")
    text = ("# written by phi1 demo; the data half of the run. From the run directory: phi1 data run "
            "configs/data.yaml\n" + yaml.safe_dump(by_hand, sort_keys=False))
    L.data_pipeline.parent.mkdir(parents=True, exist_ok=True)
    if not L.data_pipeline.exists() or L.data_pipeline.read_text() != text:
        atomic_write_text(L.data_pipeline, text)
    pc = parse_pipeline(data_pipeline(cfg, L, workers, endpoint, model, api_key_env), L.data_pipeline)
    stages = pipeline_stages(pc, exec_config(pc, quiet=True))
    from phi1.demo.config import demo_kinds

    kinds = demo_kinds()
    for st in stages:
        st.title = kinds[st.name].demo.title
        st.command = f"phi1 data run configs/data.yaml --until {st.name} --quiet"
    return stages


def synth_stages(cfg: DemoConfig, L: Layout, endpoint: str | None, model: str | None,
                 api_key_env: str | None) -> list:
    from phi1.utils.stagegraph import Stage

    if not endpoint:
        return []
    out = []
    for kind, count in (("textbooks", cfg.synth.textbooks), ("exercises", cfg.synth.exercises)):
        if count <= 0:
            continue
        raw, valid = L.synth / f"{kind}.jsonl", L.synth / f"{kind}.valid.jsonl"
        job = {"kind": kind, "endpoint": endpoint, "model": model or ANY_MODEL, "count": count, "out": str(raw),
               "concurrency": cfg.synth.concurrency, "api_key_env": api_key_env}
        key = f" --api-key-env {api_key_env}" if api_key_env else ""
        out.append(Stage(
            f"synth-{kind}", "synth", job, run=lambda fp, job=job: _synth(job), title=f"generate synthetic {kind}",
            command=f"phi1 synth {kind} --endpoint {endpoint} --model {job['model']} --concurrency "
                    f"{cfg.synth.concurrency}{key} --count {count} --out {_rel(raw, L)}"))
        check = {"kind": kind, "input": str(raw), "out": str(valid)}
        out.append(Stage(
            f"validate-{kind}", "synth-validate", check, after=(f"synth-{kind}",), title=f"validate synthetic {kind}",
            run=lambda fp, check=check: _synth_validate(check),
            command=f"phi1 synth validate --kind {kind} --input {_rel(raw, L)} --out {_rel(valid, L)}"))
    return out


def _synth(job: dict) -> dict:
    from phi1.synth.job import JobConfig, report_dict, run_job

    rep = run_job(JobConfig(**job))
    if not rep.complete:
        raise Phi1Error(f"synth {job['kind']}: {rep.missing} of {rep.requested} records missing ({rep.failed} failed"
                        + (f", see {rep.failures_file}" if rep.failures_file else "") + ")")
    return report_dict(rep)


def _synth_validate(check: dict) -> dict:
    from phi1.synth.validate import ValidateConfig, validate_file

    return validate_file(ValidateConfig(**check))["counts"]


def _rel(path, L: Layout) -> str:
    """A path as the reproduce-by-hand commands write it: relative to the run directory when inside it."""
    p = Path(path)
    try:
        return str(p.relative_to(L.root))
    except ValueError:
        return str(p)


def _rel_values(value, L: Layout):
    """Every path-like string under the run directory in a config mapping, made relative to it."""
    if isinstance(value, dict):
        return {k: _rel_values(v, L) for k, v in value.items()}
    if isinstance(value, list):
        return [_rel_values(v, L) for v in value]
    if isinstance(value, str) and value.startswith(str(L.root) + os.sep):
        at = value.rfind("@")
        if at > 0 and value[at + 1:].isdigit():  # RUN@STEP
            return f"{_rel(value[:at], L)}@{value[at + 1:]}"
        return _rel(value, L)
    return value


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


def train_config(cfg_stage, L: Layout, name: str, *, init: str, tokenizer: Path, shards: Path,
                 extra: dict | None = None) -> dict:
    """A complete training config (as a mapping) for this run: the stage's recipe, the run's paths."""
    sets = {"run.name": name, "run.out_dir": str(L.runs), "model.init": init, "model.tokenizer": str(tokenizer),
            "data.train": [{"path": str(shards), "weight": 1.0}]}
    return stage_recipe(cfg_stage, sets, extra)


def write_train_config(L: Layout, name: str, data: dict) -> Path:
    """`RUN/configs/NAME.yaml`: the config as it ran, its paths relative to the run directory."""
    path = L.configs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# written by phi1 for run {L.root}; from the run directory: phi1 train "
                      f"configs/{name}.yaml\n" + yaml.safe_dump(_rel_values(data, L), sort_keys=False))
    return path


def train_stage(L: Layout, name: str, data: dict, *, title: str, after: tuple[str, ...],
                init: Callable[[], str] | None = None, validate: Callable[[], None] | None = None,
                run_name: str | None = None):
    """A training run as a stage: its config validated up front, written to RUN/configs/NAME.yaml and
    trained in-process. `init`, when given, names the starting model once the stages before it ran
    (a finetune's base checkpoint); the fingerprint sees the config as written before that."""
    from phi1.train.config import load_config, set_fields
    from phi1.utils.stagegraph import Stage

    run_name = run_name or name

    def check() -> None:
        load_config(data=data)
        if validate is not None:
            validate()

    def run(fp: str) -> dict:
        from phi1.train.trainer import train

        final = set_fields(data, {"model.init": init()}) if init is not None else data
        write_train_config(L, run_name, final)
        result = train(load_config(data=final))
        last = result.get("last") or {}
        return {"step": result["step"], **({"loss": round(last["loss"], 6)} if "loss" in last else {})}

    return Stage(name, "train", data, run=run, after=after, title=title, validate=check,
                 command=f"phi1 train configs/{run_name}.yaml", clear=lambda: _remove(L.run_dir(run_name)))


def _remove(path: Path) -> None:
    """Remove what a stage wrote inside the run directory (the runner owns it), before a fresh run."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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
    with directory_commit(dst, replace=True, mode=0o755) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def tokenizer_stage(L: Layout, name: str, inputs: list[Path], vocab_size: int, after: tuple[str, ...],
                    title: str = "train the tokenizer"):
    from phi1.utils.stagegraph import Stage

    config = {"inputs": [str(p) for p in inputs], "vocab_size": vocab_size, "out": str(L.tokenizer)}

    def run(fp: str) -> dict:
        from phi1.tokenizer import train_tokenizer

        return {"tokens": len(train_tokenizer(inputs, vocab_size=vocab_size, out_dir=L.tokenizer))}

    return Stage(name, "tokenizer", config, run=run, after=after, title=title, clear=lambda: _remove(L.tokenizer),
                 command=f"phi1 tokenizer train --input {' '.join(_rel(p, L) for p in inputs)} --vocab-size "
                         f"{vocab_size} --out {_rel(L.tokenizer, L)}")


def pack_stage(L: Layout, name: str, tokenizer: Path, inputs: list[Path], out: Path, val_fraction: float,
               after: tuple[str, ...], title: str):
    from phi1.utils.stagegraph import Stage

    config = {"tokenizer": str(tokenizer), "inputs": [str(p) for p in inputs], "out": str(out),
              "val_fraction": val_fraction}

    def check() -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction = {val_fraction}: must be in [0, 1)")

    def run(fp: str) -> dict:
        from phi1.data.pack import pack

        m = pack(tokenizer, inputs, out, val_fraction=val_fraction)
        return {k: m[k] for k in ("train_tokens", "val_tokens") if k in m}

    return Stage(name, "pack", config, run=run, after=after, title=title, validate=check, clear=lambda: _remove(out),
                 command=f"phi1 data pack --tokenizer {_rel(tokenizer, L)} --input "
                         f"{' '.join(_rel(p, L) for p in inputs)} --out {_rel(out, L)} --val-fraction {val_fraction}")


def export_stage(L: Layout, name: str, run_name: str, which: str, dst: Path, after: tuple[str, ...], title: str):
    """Copy a training run's best (or latest) checkpoint's model directory to `dst`."""
    from phi1.utils.stagegraph import Stage

    def command() -> str:
        try:
            src = checkpoint_model_dir(L.run_dir(run_name), which)
        except Phi1Error:
            src = L.run_dir(run_name) / "checkpoints" / f"<{which} step>" / "model"
        return f"cp -r {_rel(src, L)} {_rel(dst, L)}"

    def run(fp: str) -> dict:
        src = checkpoint_model_dir(L.run_dir(run_name), which)
        export_model(src, dst)
        return {"from": _rel(src, L)}

    return Stage(name, "export", {"run": run_name, "which": which, "out": str(dst)}, run=run, after=after,
                 title=title, command=command, clear=lambda: _remove(dst))


def training_stages(cfg: DemoConfig, L: Layout, *, pretrain_inputs: list[Path], finetune_inputs: list[Path],
                    device: str, after: tuple[str, ...]) -> list:
    stages = []
    if cfg.tokenizer.path:  # a directory, or a hub name in the HF cache (the paper's: codegen-350M-mono)
        tokenizer = resolve_tokenizer(cfg.tokenizer.path, "tokenizer.path")
        tok_after: tuple[str, ...] = ()
    else:
        tokenizer = L.tokenizer
        stages.append(tokenizer_stage(L, "tokenizer", pretrain_inputs, cfg.tokenizer.vocab_size, after))
        tok_after = ("tokenizer",)
    pre_shards, ft_shards = L.shards / "pretrain", L.shards / "finetune"
    stages.append(pack_stage(L, "pack-pretrain", tokenizer, pretrain_inputs, pre_shards, cfg.pack.val_fraction,
                             after + tok_after, "pack pretraining shards"))
    stages.append(pack_stage(L, "pack-finetune", tokenizer, finetune_inputs, ft_shards,
                             cfg.pack.finetune_val_fraction, after + tok_after, "pack finetuning shards"))
    dev = {"run.device": device}
    pre = train_config(cfg.pretrain, L, "pretrain", init=cfg.model_preset, tokenizer=tokenizer, shards=pre_shards,
                       extra=dev)
    stages.append(train_stage(L, "pretrain", pre, title="pretrain on the filtered corpus",
                              after=("pack-pretrain",) + tok_after))
    ft = train_config(cfg.finetune, L, "finetune", init=str(L.run_dir("pretrain")), tokenizer=tokenizer,
                      shards=ft_shards, extra=dev)
    stages.append(train_stage(L, "finetune", ft, title="finetune on the exercises",
                              after=("pack-finetune", "pretrain") + tok_after,
                              init=lambda: finetune_init(L.run_dir("pretrain")),
                              validate=lambda: check_eval_data(cfg.finetune, "finetune")))
    stages.append(export_stage(L, "export", "finetune", "best", L.model, ("finetune",),
                               "export the best finetuned checkpoint"))
    return stages


def eval_stages(cfg: DemoConfig, L: Layout, model_dir: Path, out: Path, device: str, after: tuple[str, ...]) -> list:
    """HumanEval pass@1 (greedy, sandboxed) and the solution loss of `model_dir`."""
    from phi1.eval.benchmark import GenerationConfig
    from phi1.utils.stagegraph import Stage

    e = cfg.eval
    gen = GenerationConfig(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, max_problems=e.max_problems)
    workers = e.workers or os.cpu_count() or 1
    he_out, loss_out = out / "humaneval", out / "solution_loss.json"

    def humaneval(fp: str) -> dict:
        from phi1.eval.benchmark import run_benchmark
        from phi1.eval.sandbox import SandboxConfig

        s = run_benchmark(model_dir, "humaneval", he_out, gen=gen,
                          sandbox_config=SandboxConfig(workers=workers).validate(), device=device)
        return {"tasks": s.get("tasks"), **s.get("pass_at_k", {})}

    def loss(fp: str) -> dict:
        from phi1.eval.loss import write_solution_loss

        r = write_solution_loss(model_dir, "humaneval", loss_out, device=device)
        return {"solution_loss": r["solution_loss"]}

    he_cmd = (f"phi1 eval humaneval --model {_rel(model_dir, L)} --out {_rel(he_out, L)} --max-new-tokens "
              f"{e.max_new_tokens} --batch-size {e.batch_size} --device {device}"
              + (f" --max-problems {e.max_problems}" if e.max_problems else "") + f" --workers {workers}")
    return [
        Stage(f"eval-humaneval-{out.name}", "eval-humaneval", {"model": str(model_dir), "generation": gen,
                                                                "workers": workers, "device": device, "out": str(he_out)},
              run=humaneval, after=after, title="HumanEval pass@1 (greedy)", command=he_cmd, validate=gen.validate,
              clear=lambda: _remove(he_out)),
        Stage(f"eval-loss-{out.name}", "eval-loss", {"model": str(model_dir), "benchmark": "humaneval",
                                                      "device": device, "out": str(loss_out)},
              run=loss, after=after, title="HumanEval solution loss", clear=lambda: _remove(loss_out),
              command=f"phi1 eval loss --model {_rel(model_dir, L)} --benchmark humaneval --out "
                      f"{_rel(loss_out, L)} --device {device}"),
    ]


def report_stage(L: Layout, after: tuple[str, ...]):
    from phi1.utils.stagegraph import Stage

    def run(fp: str) -> None:
        from phi1.demo.report import build_report

        build_report(L.root)

    return Stage("report", "report", {"run": str(L.root)}, run=run, after=after, title="write the report",
                 command="phi1 report .")


def run_demo(cfg: DemoConfig, run_dir: Path, *, device: str = "cpu", endpoint: str | None = None,
             model: str | None = None, api_key_env: str | None = None, log=print) -> Path:
    """Run (or resume) the demo in `run_dir`: a new or empty directory, or one a demo wrote.

    The directory is locked for the whole run: a second demo on it fails at once, naming the pid.
    """
    with own_run_dir(Path(run_dir), "demo"):
        return _run_demo(cfg, Path(run_dir), device=device, endpoint=endpoint, model=model,
                         api_key_env=api_key_env, log=log)


def demo_stages(cfg: DemoConfig, L: Layout, *, device: str, endpoint: str | None, model: str | None,
                api_key_env: str | None) -> list:
    stages = data_stages(cfg, L, endpoint=endpoint, model=model, api_key_env=api_key_env)
    stages += synth_stages(cfg, L, endpoint, model, api_key_env)
    pre_inputs, ft_inputs = [L.stage("decontaminate")], [L.stage("exercises")]
    after = ["decontaminate", "exercises"]
    if endpoint and cfg.synth.textbooks:
        pre_inputs.append(L.synth / "textbooks.valid.jsonl")
        after.append("validate-textbooks")
    if endpoint and cfg.synth.exercises:
        ft_inputs.append(L.synth / "exercises.valid.jsonl")
        after.append("validate-exercises")
    stages += training_stages(cfg, L, pretrain_inputs=pre_inputs, finetune_inputs=ft_inputs, device=device,
                              after=tuple(after))
    stages += eval_stages(cfg, L, L.model, L.eval, device, ("export",))
    stages.append(report_stage(L, tuple(s.name for s in stages)))
    return stages


def _run_demo(cfg: DemoConfig, run_dir: Path, *, device: str, endpoint: str | None, model: str | None,
              api_key_env: str | None, log) -> Path:
    from phi1.utils.stagegraph import StageGraph

    L = Layout(run_dir)
    graph = StageGraph(demo_stages(cfg, L, device=device, endpoint=endpoint, model=model, api_key_env=api_key_env),
                       L.root / ".stages", log=log)
    graph.validate()
    atomic_write_text(L.root / "demo.json", json.dumps({"name": cfg.name, "device": device,
                                                        "endpoint": endpoint, "model": model}, indent=2))
    graph.run()
    return L.root
