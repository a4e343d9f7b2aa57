"""The paper's pruning study (§5): similarity scores, and `phi1 ablate --prune-thresholds` end to end."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _humaneval():
    from phi1.data.benchmarks import load_humaneval

    return load_humaneval()


def _stdlib_functions(n: int) -> list[str]:
    """Real functions nobody here wrote: ordinary exercises unrelated to HumanEval."""
    out = []
    for f in sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and 8 < len(ast.unparse(node).splitlines()) < 40:
                out.append(ast.unparse(node))
                if len(out) == n:
                    return out
    return out


PADDING = ["    total = 0", "    total += 3", "    values = [total, total + 1]", "    values.sort()",
           "    count = len(values)", "    count -= 1", "    flag = count > 2"]


def _padded(solution: str, extra: int) -> str:
    """A HumanEval solution with `extra` unrelated statements put in front of its body: less similar as extra grows."""
    lines = solution.rstrip("\n").splitlines()
    # after the signature and docstring: the first line of the body that is not part of the docstring
    tree = ast.parse(solution)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name not in ("helper",))
    at = fn.body[1].lineno - 1 if len(fn.body) > 1 else fn.body[0].lineno - 1
    return "\n".join(lines[:at] + PADDING[:extra] + lines[at:]) + "\n"


def test_ast_match_rate_is_invariant_to_names_and_layout_and_falls_with_edits():
    from phi1.data.similarity import BenchmarkSimilarity, ast_match_rate

    tasks = _humaneval()
    sol = tasks[0].solution
    renamed = sol.replace("numbers", "values").replace("threshold", "eps").replace("has_close_elements", "near")
    assert ast_match_rate(renamed, sol) == 1.0
    rates = [ast_match_rate(_padded(sol, k), sol) for k in (1, 3, 5, 7)]
    assert rates == sorted(rates, reverse=True) and rates[0] < 1.0 and rates[-1] > 0.3, rates
    assert ast_match_rate("x = 1\n", sol) == 0.0
    # The scorer finds the task a copy came from, under both measures, and keeps each task's best.
    sim = BenchmarkSimilarity(tasks, encoder="hashing")
    unrelated = _stdlib_functions(1)[0]
    got = sim.score([renamed, tasks[5].solution, unrelated])
    assert got[0]["ast"] == {"task_id": tasks[0].task_id, "score": 1.0}
    assert got[1]["ast"]["task_id"] == tasks[5].task_id and got[1]["embedding"]["task_id"] == tasks[5].task_id
    assert got[2]["ast"]["score"] < 0.5
    best = sim.task_best()
    assert best[tasks[0].task_id]["ast"] == 1.0 and best[tasks[5].task_id]["ast"] == 1.0
    assert best[tasks[9].task_id]["ast"] < 1.0


MICRO = {"train.max_steps": 2, "train.global_batch": 4, "train.micro_batch": 4, "data.seq_len": 64,
         "schedule.warmup_steps": 1, "eval.interval": 1, "eval.batches": 1, "checkpoint.interval": 1,
         "train.log_interval": 1}


@pytest.mark.slow
def test_prune_study_end_to_end(tmp_path, tiny_model_dir):
    from phi1.data.similarity import ast_match_rate
    from phi1.demo.config import RECIPES

    tasks = _humaneval()
    records = []
    # Copies of HumanEval/0 and /1 (reformatted: still 1.0), graded edits of /5, /4 and /9 (about 0.97,
    # 0.90, 0.82), and ordinary code: removals must grow as τ falls, the ordinary code must never go.
    for t in tasks[:2]:
        records.append({"id": f"copy-{t.task_id}", "text": t.solution.replace("    ", "  ")})
    graded = {}
    for t, extra in ((tasks[5], 1), (tasks[4], 2), (tasks[9], 3)):
        text = _padded(t.solution, extra)
        graded[f"edit-{t.task_id}-{extra}"] = ast_match_rate(text, t.solution)
        records.append({"id": f"edit-{t.task_id}-{extra}", "text": text})
    ordinary = _stdlib_functions(30)
    records += [{"id": f"stdlib-{i}", "text": s} for i, s in enumerate(ordinary)]
    ex = tmp_path / "exercises.jsonl"
    ex.write_text("".join(json.dumps(r) + "\n" for r in records))

    base = yaml.safe_load((RECIPES / "demo-tiny.yaml").read_text())
    base.update({"name": "prune-micro", "finetune": {"recipe": "tiny-finetune.yaml", "set": MICRO},
                 "eval": {"max_problems": 6, "max_new_tokens": 8, "batch_size": 4, "workers": 1},
                 "prune": {"exercises": [str(ex)], "base": str(tiny_model_dir)}})
    recipe = tmp_path / "prune.yaml"
    recipe.write_text(yaml.safe_dump(base))
    run = tmp_path / "run"
    env = {**os.environ, "PHI1_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "phi1", "ablate", "--config", str(recipe), "--out", str(run),
           "--prune-thresholds", "0.95,0.85,0.8"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads((run / "prune.json").read_text())
    arms = [t["tau"] for t in table["thresholds"]]
    assert arms == [0.95, 0.85, 0.8]
    removed = [t["exercises_removed"] for t in table["thresholds"]]
    expect = [2 + sum(v >= tau for v in graded.values()) for tau in arms]
    assert removed == expect and removed == sorted(removed) and removed[-1] > removed[0], (removed, graded)
    scores = {json.loads(line)["id"]: json.loads(line)["score"] for line in (run / "prune" / "scores.jsonl").open()}
    assert all(scores[f"stdlib-{i}"] < 0.8 for i in range(len(ordinary))), scores
    for t in table["thresholds"]:
        h = t["halves"]
        assert h["total"]["problems"] == 6 == h["similar"]["problems"] + h["non-similar"]["problems"]
        # HumanEval/0, /1 (copies) and /5 are similar at every τ; /4 joins at 0.85 (/9 is not evaluated)
        assert h["similar"]["problems"] == (3 if t["tau"] == 0.95 else 4), t
        for half in h.values():
            for key in ("pass@1_full", "pass@1_pruned", "loss_full", "loss_pruned"):
                assert half[key] is not None or half["problems"] == 0, (t["tau"], half)
        # one finetuned model per arm, from the same base
        assert (run / "models" / f"prune-tau-{t['tau']:g}" / "config.json").is_file()
    assert (run / "models" / "prune-full" / "config.json").is_file()
    md = (run / "prune.md").read_text()
    assert "pass@1 pruned" in md and "0.85" in md and (run / "figures" / "prune.png").stat().st_size > 1000
    # A solution loss split into halves recombines to the total (token-weighted).
    per = json.loads((run / "eval" / "prune-full" / "solution_loss.json").read_text())
    assert abs(sum(s for s, _ in per["per_task"].values()) / sum(n for _, n in per["per_task"].values())
               - per["solution_loss"]) < 1e-5
    # Rerun: every stage is done; a new threshold adds only its own arm; other scoring settings are refused.
    r2 = subprocess.run(cmd[:-1] + ["0.95,0.85,0.8,0.75"], env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "prune the exercises at τ=0.75\n" in r2.stdout and "prune the exercises at τ=0.8: done earlier" in r2.stdout
    assert "finetune the full arm: done earlier" in r2.stdout
    r3 = subprocess.run(cmd + ["--prune-metric", "embedding"], env=env, capture_output=True, text=True)
    assert r3.returncode == 2 and "metric='ast'" in r3.stderr and "new --out" in r3.stderr


def test_prune_study_refuses_bad_settings_before_running(tmp_path):
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    run = tmp_path / "run"
    for args, needle in ((["--prune-thresholds", "0.9,x"], "'x' is not a number"),
                         (["--prune-thresholds", "0.9,1.5"], "must be in (0, 1]"),
                         (["--prune-thresholds", "0.9,0.9"], "repeats a value"),
                         (["--config", "ablation-tiny.yaml", "--prune-thresholds", "0.9"], "finetune.recipe")):
        r = subprocess.run([sys.executable, "-m", "phi1", "ablate", "--out", str(run), *args], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert not run.exists()
