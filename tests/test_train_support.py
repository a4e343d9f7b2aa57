"""Helpers shared by the test_train_* files (no tests here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import phi1

from phi1.data.pack import pack
from phi1.train.config import load_config


def pack_stdlib(tokenizer_dir, stdlib_slice, out: Path) -> Path:
    """Pack the stdlib slice with a 10% document-level val split."""
    if not (out / "manifest.json").exists():
        pack(tokenizer_dir, stdlib_slice, out, workers=1, val_fraction=0.1)
    return out


def micro_config(run_dir: Path, shards: Path, tokenizer_dir, **sections) -> dict:
    """A raw config dict for the micro preset at seq len 64; `sections` override per section."""
    cfg = {
        "run": {"name": run_dir.name, "out_dir": str(run_dir.parent), "seed": 7, "device": "cpu"},
        "model": {"init": "micro", "tokenizer": str(tokenizer_dir)},
        "data": {"train": [str(shards)], "seq_len": 64},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.1},
        "schedule": {"kind": "linear", "warmup_steps": 3},
        "train": {"micro_batch": 4, "global_batch": 8, "max_steps": 20, "precision": "fp32", "log_interval": 1},
        "eval": {"interval": 10, "batches": 2},
        "checkpoint": {"interval": 10, "keep_last_k": 2},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


def env_one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PHI1_NO_PROGRESS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def phi1_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "phi1", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "phi1", *args]


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_one_thread(), timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


# ---- distributed tests (test_train_ddp.py, test_train_fsdp.py) ------------------------------------

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
        from phi1.train.trainer import train

        train(load_config(RECIPE, overrides(tmp / "one", shards, tokenizer_dir, 6)))
    finally:
        torch.set_num_threads(n)
    return tmp, shards, losses(tmp / "one")


def close(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) for k in a)


def make_scripted_callback(scores: list[float]):
    """An eval callback factory (for `eval.callback`): returns `scores` in order, after a real forward."""
    it = iter(scores)

    def callback(model, tokenizer) -> dict:
        with torch.no_grad():
            logits = model(torch.tensor([[tokenizer.eos_id] * 4]))
        return {"score": next(it), "logit_mean": float(logits.mean())}

    return callback


def make_gate_callback(gate: str, timeout: float = 120.0):
    """An eval callback factory that blocks until the file `gate` exists (holds a run mid-way, for tests
    that need a second process to meet a run that is certainly still going)."""
    import time

    def callback(model, tokenizer) -> dict:
        deadline = time.time() + timeout
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
        return {"gate": 1.0}

    return callback


@pytest.fixture(scope="module")
def stdlib_shards(tmp_path_factory, tokenizer_dir, stdlib_slice):
    """The stdlib slice packed once per test module."""
    return pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path_factory.mktemp("packed"))
