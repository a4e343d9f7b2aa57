"""torchrun on CPU (gloo): FSDP2 (fully_shard) runs, checkpoints a gathered state and resumes."""

from __future__ import annotations

import json
import math

import torch

from phi1.model.hf import load_model_dir
from test_train_support import close, losses, overrides, reference, torchrun_train  # noqa: F401 (fixture)


def test_fsdp2_runs_and_resumes(reference, tokenizer_dir):
    tmp, shards, ref = reference
    run_dir = tmp / "fsdp"
    torchrun_train(overrides(run_dir, shards, tokenizer_dir, 3, "distributed.strategy=fsdp2"))
    assert sorted(losses(run_dir)) == [1, 2, 3]
    # Resume from the gathered step-3 checkpoint (full model + optimizer state) and go on to step 6.
    torchrun_train(overrides(run_dir, shards, tokenizer_dir, 6, "distributed.strategy=fsdp2"), "--resume")
    got = losses(run_dir)
    assert close(ref, got), (ref, got)
    a = load_model_dir(tmp / "one" / "checkpoints" / "step-6" / "model").state_dict()
    b = load_model_dir(run_dir / "checkpoints" / "step-6" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_fsdp2_fp16_with_accumulation_1_skips_no_step(reference, tokenizer_dir):
    """fp16 under FSDP2 (parameters all-gathered in fp16, ShardedGradScaler): the first step at the
    starting scale of 2**16 is taken on both ranks, and the run learns like the fp32 reference."""
    tmp, shards, ref = reference
    run_dir = tmp / "fsdp-fp16"
    # global batch 8 = micro 4 x 2 ranks: accumulation 1, the loss scale reaches backward unreduced
    torchrun_train(overrides(run_dir, shards, tokenizer_dir, 3, "distributed.strategy=fsdp2",
                             "train.precision=fp16", "train.global_batch=8"))
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["loss_scale"] == 2.0**16 and not any(r["skipped"] for r in steps), steps
    assert all(math.isfinite(r["grad_norm"]) for r in steps), steps
    assert abs(steps[0]["loss"] - ref[1]) < 0.05 * ref[1], (steps, ref)  # same init, a different batch size
