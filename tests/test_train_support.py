"""Helpers shared by the test_train_* files (no tests here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from phi1.data.pack import pack


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
