"""torchrun on CPU (gloo): DDP with 2 ranks equals 1 rank with twice the accumulation."""

from __future__ import annotations

import json

import torch

from phi1.model.hf import load_model_dir
from test_train_support import close, losses, overrides, reference, torchrun_train  # noqa: F401 (fixture)


def test_ddp_two_ranks_equal_one_rank_with_accumulation(reference, tokenizer_dir):
    tmp, shards, ref = reference
    torchrun_train(overrides(tmp / "ddp", shards, tokenizer_dir, 6, "distributed.strategy=ddp"))
    got = losses(tmp / "ddp")
    assert sorted(got) == list(range(1, 7)) and ref[6] < ref[1]
    assert close(ref, got), (ref, got)
    rec = json.loads((tmp / "ddp" / "checkpoints" / "step-6" / "state.json").read_text())
    assert rec["world_size"] == 2 and rec["samples"] == 6 * 16
    a = load_model_dir(tmp / "one" / "checkpoints" / "step-6" / "model").state_dict()
    b = load_model_dir(tmp / "ddp" / "checkpoints" / "step-6" / "model").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
