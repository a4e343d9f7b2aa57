"""`phi1 demo` end to end at micro scale, killed between stages and resumed; `phi1 report`; ablation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MICRO_TRAIN = {"train.max_steps": 4, "train.global_batch": 4, "train.micro_batch": 4, "data.seq_len": 64,
               "schedule.warmup_steps": 1, "eval.interval": 2, "eval.batches": 2, "checkpoint.interval": 2,
               "train.log_interval": 1}


def micro_recipe(tmp_path: Path, stdlib_slice, **extra) -> Path:
    from phi1.demo.config import RECIPES

    base = yaml.safe_load((RECIPES / "demo-tiny.yaml").read_text())
    base.update({
        "name": "demo-micro",
        "data": {**base["data"], "collect": {"python_stdlib": False, "sources": [str(p) for p in stdlib_slice]}},
        "tokenizer": {"vocab_size": 600},
        "pack": {"val_fraction": 0.2},
        "model_preset": "micro",
        "pretrain": {"recipe": "tiny-pretrain.yaml", "set": MICRO_TRAIN},
        "finetune": {"recipe": "tiny-finetune.yaml", "set": {**MICRO_TRAIN, "train.max_steps": 2}},
        "eval": {"max_problems": 3, "max_new_tokens": 8, "batch_size": 4, "workers": 1},
    })
    base.update(extra)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def phi1_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "phi1", *map(str, args)]


@pytest.mark.slow
@pytest.mark.xdist_group("micro_demo")
def test_demo_micro_end_to_end_with_resume(micro_demo):
    recipe, run, before, r = micro_demo  # killed as soon as its dedup stage finished, then rerun
    assert "collect.json" in before and "report.json" not in before

    # The rerun of the same command: finished stages are skipped, the rest completes.
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "collect: done earlier, skipping" in r.stdout or "collect the corpus: done earlier" in r.stdout
    for name, mtime in before.items():
        assert (run / ".stages" / name).stat().st_mtime_ns == mtime, f"{name} was rerun"
    assert f"report: {run / 'report.md'}" in r.stdout and "phi1 serve --model" in r.stdout

    # What the run produced is real and usable.
    md = (run / "report.md").read_text()
    for section in ("Data funnel", "Educational value", "Decontamination", "Training", "Evaluation",
                    "Wall time per stage", "Reproduce each stage by hand"):
        assert f"## {section}" in md
    for fig in ("edu_scores.png", "loss_curves.png"):
        assert (run / "figures" / fig).stat().st_size > 1000
        assert f"figures/{fig}" in md
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    summary = json.loads((run / "eval" / "humaneval" / "summary.json").read_text())
    assert summary["tasks"] == 3
    assert json.loads((run / "eval" / "solution_loss.json").read_text())
    g = subprocess.run(phi1_cmd("generate", "--model", run / "model", "--prompt", "def f(x):",
                                "--max-new-tokens", 4), capture_output=True, timeout=300)
    assert g.returncode == 0, g.stderr

    # `phi1 report` regenerates the report from the run directory alone.
    (run / "report.md").unlink()
    r = subprocess.run(phi1_cmd("report", run), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "report.md").read_text() == md


def test_demo_recipe_errors_name_the_field(tmp_path, stdlib_slice):
    bad = micro_recipe(tmp_path, stdlib_slice, model_presett="micro")
    r = subprocess.run(phi1_cmd("demo", "--recipe", bad, "--out", tmp_path / "r"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "model_presett: unknown field" in r.stderr
    r = subprocess.run(phi1_cmd("report", tmp_path / "nothing"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "run directory not found" in r.stderr
