"""One stage graph for `phi1 data run`, `phi1 demo` and `phi1 ablate`: typed configs validated before
anything runs, fingerprints that rerun exactly what an edit touched, commands rendered from the
configs that reproduce the run by hand."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from phi1.errors import ConfigError, Phi1Error
from phi1.utils.stagegraph import Stage, StageGraph

from test_demo import micro_recipe, phi1_cmd


@dataclass
class Scale:
    factor: int = 2

    def validate(self) -> None:
        if self.factor < 1:
            raise ConfigError(f"factor = {self.factor}: must be at least 1")


def _graph(tmp_path, factors: dict, calls: list, fail: set = frozenset()):
    """A -> B -> C and D: each stage writes a file from its config and what it reads."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)

    def make(name, reads):
        def run(fp):
            calls.append(name)
            base = sum(int((out / r).read_text()) for r in reads) if reads else 1
            (out / name).write_text(str(base * factors[name].factor))
            if name in fail:
                raise Phi1Error(f"{name} broke")
        return Stage(name, "scale", factors[name], run=run, after=tuple(reads), title=f"stage {name}",
                     command=f"scale {name}", clear=lambda: (out / name).unlink(missing_ok=True) or calls.append(f"clear-{name}"))

    return StageGraph([make("A", []), make("B", ["A"]), make("C", ["B"]), make("D", [])], tmp_path / "marks",
                      log=lambda msg: None)


def test_a_changed_config_reruns_that_stage_and_what_reads_it_nothing_else(tmp_path):
    calls: list = []
    f = {n: Scale() for n in "ABCD"}
    res = _graph(tmp_path, f, calls).run()
    assert [r["status"] for r in res] == ["ran"] * 4 and (tmp_path / "out" / "C").read_text() == "8"
    calls.clear()
    assert [r["status"] for r in _graph(tmp_path, f, calls).run()] == ["skipped"] * 4 and calls == []
    f["B"] = Scale(3)
    res = {r["stage"]: r["status"] for r in _graph(tmp_path, f, calls).run()}
    assert res == {"A": "skipped", "B": "ran", "C": "ran", "D": "skipped"}
    assert calls == ["clear-B", "B", "clear-C", "C"] and (tmp_path / "out" / "C").read_text() == "12"
    m = json.loads((tmp_path / "marks" / "B.json").read_text())
    assert m["status"] == "done" and m["config"] == {"factor": 3} and m["command"] == "scale B"


def test_a_failed_stage_resumes_without_clearing_and_a_bad_config_fails_before_anything_runs(tmp_path):
    calls: list = []
    f = {n: Scale() for n in "ABCD"}
    with pytest.raises(Phi1Error, match="stage 'B' failed after .*B broke; fix the cause and rerun"):
        _graph(tmp_path, f, calls, fail={"B"}).run()
    assert json.loads((tmp_path / "marks" / "B.json").read_text())["status"] == "running"
    calls.clear()
    _graph(tmp_path, f, calls).run()
    assert calls == ["B", "C", "D"]  # B resumes (same fingerprint): what it wrote is not cleared
    calls.clear()
    f["D"] = Scale(0)  # the last stage's config is bad: nothing runs, not even the changed first one
    f["A"] = Scale(5)
    with pytest.raises(ConfigError, match="stage 'D': factor = 0: must be at least 1"):
        _graph(tmp_path, f, calls).run()
    assert calls == []


def test_stages_must_name_earlier_stages(tmp_path):
    s = [Stage("B", "k", {}, run=lambda fp: None, after=("A",)), Stage("A", "k", {}, run=lambda fp: None)]
    with pytest.raises(Phi1Error, match=r"stage 'B' reads \['A'\], which do not run before it"):
        StageGraph(s)


# ---- the demo on the graph ------------------------------------------------------------------------


def _env():
    return {**os.environ, "PHI1_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def test_a_bad_field_in_the_last_stage_fails_before_the_first_runs(tmp_path, stdlib_slice):
    def eval_batch(raw):
        raw["eval"]["batch_size"] = 0

    def finetune_field(raw):
        raw["finetune"]["set"]["train.max_stepz"] = 2

    def dedup_type(raw):
        raw["data"]["dedup"] = {"threshold": "high"}

    def old_key(raw):
        raw["data"]["dedup_threshold"] = 0.8

    for i, (edit, says) in enumerate(((eval_batch, ["batch_size: 0 is not allowed"]), (finetune_field, ["max_stepz"]),
                                      (dedup_type, ["data.dedup", "threshold", "'high'"]),
                                      (old_key, ["data.dedup_threshold has moved to data.dedup.threshold"]))):
        recipe = micro_recipe(tmp_path, stdlib_slice)
        raw = yaml.safe_load(recipe.read_text())
        edit(raw)
        recipe.write_text(yaml.safe_dump(raw))
        run = tmp_path / f"run-{i}"
        r = subprocess.run(phi1_cmd("demo", "--recipe", recipe, "--out", run), env=_env(), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert all(w in r.stderr for w in says) and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (run / "data" / "collect").exists() and not list((run / ".stages").glob("*.json"))


def _outputs(root: Path) -> dict[str, str]:
    """What a run produced, by content: data shards (decompressed), tokenizer, token shards, the
    exported model's weights, the completions and the scores."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or p.name.startswith(".phi1"):  # phi1's bookkeeping: markers, ledgers
            continue
        if rel.startswith("data/") and "/data/" in rel[5:] and p.name.endswith(".jsonl.gz"):
            out[rel] = hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
        elif rel.startswith("shards/") and p.suffix == ".bin":  # named SPLIT-GENERATION-INDEX: the generation varies
            out[re.sub(r"-[0-9a-f]{12,}-", "-", rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif rel.startswith("tokenizer/") and p.suffix == ".json":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif rel == "model/model.safetensors":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    samples = root / "eval" / "humaneval" / "samples.jsonl"
    out["completions"] = json.dumps(sorted((r["task_id"], r["completion"]) for r in
                                           map(json.loads, samples.read_text().splitlines())))
    out["pass@1"] = str(json.loads((root / "eval" / "humaneval" / "summary.json").read_text())["pass_at_k"])
    out["solution_loss"] = str(json.loads((root / "eval" / "solution_loss.json").read_text())["solution_loss"])
    return out


@pytest.mark.slow
@pytest.mark.xdist_group("micro_demo")
def test_reproduce_by_hand_and_an_edit_reruns_from_that_stage_on(tmp_path, micro_demo):
    """The micro demo (killed after dedup and resumed: `micro_demo`) rebuilt stage by stage from the
    report's commands gives the same outputs; then an edit reruns from the edited stage on. Its edit
    leaves the stages test_demo.py reads as they were."""
    recipe, run, _, r = micro_demo
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = _outputs(run)
    assert len([k for k in want if k.startswith("data/")]) >= 8 and "model/model.safetensors" in want

    # The report's commands, run one by one from a copy of configs/ in a new directory, rebuild every output.
    md = (run / "report.md").read_text()
    block = md.split("## Reproduce each stage by hand", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [c for c in block.strip().splitlines() if c and not c.startswith("#")]
    assert commands[0] == "cd RUN_DIRECTORY" and commands[-1] == "phi1 report ."
    assert any(c.startswith("phi1 data run configs/data.yaml --until dedup") for c in commands)
    assert any(c.startswith("phi1 train configs/finetune.yaml") for c in commands)
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(run / "configs", again / "configs")
    for c in commands[1:]:
        argv = shlex.split(c)
        if argv[0] == "phi1":
            argv = phi1_cmd(*argv[1:])
        p = subprocess.run(argv, cwd=again, env=_env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{c}\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
    got = _outputs(again)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []

    # Editing the finetune settings reruns finetune and everything after it, nothing before. (An edit of a
    # data stage reruns from that stage on the same way: tests/test_data_pipeline.py, with the demo's
    # data stages being `phi1 data run`'s own.)
    before = {p.stem: json.loads(p.read_text())["finished"] for p in (run / ".stages").glob("*.json")}
    raw = yaml.safe_load(recipe.read_text())
    raw["finetune"]["set"]["train.max_steps"] = 3
    recipe.write_text(yaml.safe_dump(raw))
    r = subprocess.run(phi1_cmd("demo", "--recipe", recipe, "--out", run), env=_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = {p.stem: json.loads(p.read_text())["finished"] for p in (run / ".stages").glob("*.json")}
    assert "pretrain on the filtered corpus: done earlier, skipping" in r.stdout
    rerun = sorted(k for k in before if after[k] != before[k])
    assert rerun == sorted(["finetune", "export", "report", *[k for k in before if k.startswith("eval-")]]), rerun
    assert yaml.safe_load((run / "configs" / "finetune.yaml").read_text())["train"]["max_steps"] == 3


def _comment_fields(text: str):
    """(dotted key, type, default) of every `key: value  # TYPE; DEFAULT — ...` line under `data:` and `pack:`."""
    import re

    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]+):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        c = re.search(r"#\s*([^;—]+?);\s*(.+?)(?:\s+—|$)", rest)
        if c and path[0][1] in ("data", "pack") and len(path) >= 2:
            yield ".".join(k for _, k in path), c.group(1).strip(), c.group(2).strip()


def _type_name(tp) -> str:
    """`float | None` -> float|null, `list[str]` -> list[str], as the recipes write types."""
    import typing

    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return "|".join("null" if a is type(None) else _type_name(a) for a in args)
    if args:
        return f"{typing.get_origin(tp).__name__}[{','.join(_type_name(a) for a in args)}]"
    return tp.__name__


def test_demo_recipe_comments_state_the_stage_configs_types_and_defaults():
    """Every `# TYPE; DEFAULT — meaning` comment of a demo recipe's stage sections says what the stage's
    config dataclass says, so the comments cannot drift from the code."""
    import dataclasses
    import typing

    from phi1.demo.config import RECIPES, PackSection, demo_kinds
    from phi1.utils.config import load_yaml

    checked = 0
    for name in ("demo-tiny", "demo-small", "phi-1", "phi-1-small", "ablation-tiny"):
        for dotted, typ, dflt in _comment_fields((RECIPES / f"{name}.yaml").read_text()):
            parts = dotted.split(".")
            if parts[0] == "data" and len(parts) == 3:
                cls, key = demo_kinds()[parts[1]].config, parts[2]
            elif parts[0] == "pack" and len(parts) == 2:
                cls, key = PackSection, parts[1]
            else:
                continue
            f = {f.name: f for f in dataclasses.fields(cls)}[key]
            want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert load_yaml(f"v: {dflt}")["v"] == want, f"{name}.yaml {dotted}: comment says default {dflt}, code {want!r}"
            assert typ == _type_name(typing.get_type_hints(cls)[key]), f"{name}.yaml {dotted}: comment says type {typ}"
            checked += 1
    assert checked >= 5 * 20
