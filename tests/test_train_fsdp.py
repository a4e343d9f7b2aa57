"""torchrun on CPU (gloo): FSDP2 (fully_shard) runs, checkpoints a gathered state and resumes."""

from __future__ import annotations

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
