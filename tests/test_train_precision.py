"""fp16 / bf16 / fp32 training (issue 27, part 1): the recipes' fp16 runs with dynamic loss scaling.

- `phi1 train` in fp16 with accumulation 1 does not skip its first step: the GradScaler's starting scale
  of 2**16 reaches the loss's backward as an fp32 factor (cast to fp16 it overflowed, every first step
  had an inf gradient and was skipped).
- The three precisions' loss curves over a short real run (micro preset, dropout 0.1, the same seed)
  agree within LOSS_TOLERANCE.
"""

from __future__ import annotations

import json
import math

import pytest

from phi1.train.config import load_config
from phi1.train.trainer import train
from test_train_support import RECIPE, micro_config, phi1_cmd, run, stdlib_shards  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# max over 20 steps of |loss_p - loss_fp32| / loss_fp32. Measured on CPU (micro preset, torch 2.13):
# fp16 1.8e-5, bf16 6.4e-5; the bounds leave ~50x for other BLAS builds. A skipped or wrongly scaled
# step moves the curve by far more (the fp16 bug's skipped first step: ~1e-1).
LOSS_TOLERANCE = {"fp16": 1e-3, "bf16": 3e-3}


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fp16_train_with_accumulation_1_does_not_skip_its_first_step(tmp_path, stdlib_shards, tokenizer_dir):
    run_dir = tmp_path / "fp16"
    sets = [f"run.out_dir={tmp_path}", f"run.name={run_dir.name}", f"data.train={stdlib_shards}",
            f"model.tokenizer={tokenizer_dir}", "train.precision=fp16", "train.micro_batch=8",
            "train.global_batch=8", "train.max_steps=3", "eval.interval=0", "checkpoint.interval=0"]
    args = ["train", str(RECIPE)]
    for s in sets:
        args += ["--set", s]
    run(phi1_cmd(*args))
    recs = [r for r in _records(run_dir) if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]
    first = recs[0]
    assert first["loss_scale"] == 2.0**16, first
    assert math.isfinite(first["grad_norm"]) and first["grad_norm"] > 0, first
    assert not any(r["skipped"] for r in recs), recs


def _curve(tmp_path, shards, tokenizer_dir, precision: str) -> dict[int, float]:
    run_dir = tmp_path / precision
    cfg = micro_config(run_dir, shards, tokenizer_dir,
                       model={"attention_dropout": 0.1, "resid_dropout": 0.1},
                       train={"max_steps": 20, "precision": precision, "micro_batch": 8, "global_batch": 8},
                       eval={"interval": 0}, checkpoint={"interval": 0})
    train(load_config(data=cfg))
    recs = [r for r in _records(run_dir) if "loss" in r]
    if precision == "fp16":
        assert not any(r["skipped"] for r in recs), recs
    return {r["step"]: r["loss"] for r in recs}


def test_fp16_bf16_and_fp32_loss_curves_agree(tmp_path, stdlib_shards, tokenizer_dir):
    curves = {p: _curve(tmp_path, stdlib_shards, tokenizer_dir, p) for p in ("fp32", "fp16", "bf16")}
    ref = curves["fp32"]
    assert sorted(ref) == list(range(1, 21)) and ref[20] < ref[1] - 0.5  # it learns
    for p, tol in LOSS_TOLERANCE.items():
        worst = max(abs(curves[p][s] - ref[s]) / ref[s] for s in ref)
        print(f"{p} vs fp32: max relative loss difference over 20 steps {worst:.2e} (tolerance {tol})")
        assert sorted(curves[p]) == sorted(ref) and worst <= tol, (p, worst, curves[p], ref)
