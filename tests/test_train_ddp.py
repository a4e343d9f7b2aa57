"""torchrun on CPU (gloo): DDP with 2 ranks equals 1 rank with twice the accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import phi1
from phi1.model.hf import load_model_dir
from phi1.train.config import load_config
from phi1.train.trainer import train
from test_train_support import losses, pack_stdlib, run, torchrun_cmd

RECIPE = Path(phi1.__file__).parent / "recipes" / "test-micro.yaml"


def overrides(run_dir: Path, shards: Path, tokenizer_dir, steps: int, *extra: str) -> list[str]:
    # global batch 16 of micro 4: accumulation 4 on one rank, 2 on each of two ranks.
    # No dropout (ranks draw different masks) and a constant schedule (so a run can be extended).
    return [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", f"data.train={shards}",
            f"model.tokenizer={tokenizer_dir}", f"train.max_steps={steps}", "train.global_batch=16",
            "model.attention_dropout=0", "model.resid_dropout=0", "schedule.kind=constant",
            "checkpoint.interval=3", "eval.interval=3", *extra]


def torchrun_train(sets: list[str], *flags: str):
    args = ["train", str(RECIPE), *flags]
    for s in sets:
        args += ["--set", s]
    return run(torchrun_cmd(2, *args), timeout=240)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_dir, stdlib_slice):
    """One process, accumulation 4, in-process with one thread."""
    tmp = tmp_path_factory.mktemp("dist")
    shards = pack_stdlib(tokenizer_dir, stdlib_slice, tmp / "shards")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(RECIPE, overrides(tmp / "one", shards, tokenizer_dir, 6)))
    finally:
        torch.set_num_threads(n)
    return tmp, shards, losses(tmp / "one")


def close(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) for k in a)


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
