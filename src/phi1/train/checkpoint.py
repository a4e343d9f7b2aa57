"""Checkpoints: an HF model directory plus the training state, written atomically.

    runs/NAME/checkpoints/
      step-N/model/          HF format (loads in transformers.AutoModelForCausalLM)
      step-N/trainer.pt      optimizer, grad scaler, RNG states of torch/numpy/python
      step-N/state.json      step, tokens, next sample index, metrics, config
      latest                 "step-N", replaced atomically after step-N is complete
      best.json              {"step", "metric", "value"}; that step is never pruned

A checkpoint is assembled in `.step-N.tmp-*` and renamed into place, so a crash
or a full disk mid-save leaves the previous checkpoints and `latest` untouched.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from phi1.errors import Phi1Error
from phi1.model.hf import save_model_dir
from phi1.model.phi import PhiForCausalLM
from phi1.train.distributed import World, barrier, broadcast_object, unwrap
from phi1.utils.io import atomic_write_json, atomic_write_text

_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sd_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_state(model, optimizer, world: World) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts keyed by parameter name.

    A collective under FSDP2. Optimizer state is keyed by FQN for every strategy,
    so a checkpoint written by one strategy (or world size) resumes under another.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _sd_options()
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _write_trainer_state(path: Path, obj: dict) -> None:
    """torch.save then fsync (a separate function so tests can make the disk 'fill up' here)."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scaler, tokenizer, state: dict,
                    world: World, keep_last_k: int = 0, keep_steps=()) -> Path:
    """Write checkpoint step-N (rank 0 writes; every rank must call). Returns its path."""
    msd, osd = gather_state(model, optimizer, world)
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    error = None
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.tmp-", dir=root))
        try:
            cfg = unwrap(model).config
            with torch.device("meta"):
                shell = PhiForCausalLM(cfg)
            shell.load_state_dict(msd, assign=True)
            save_model_dir(shell, tmp / "model", tokenizer=tokenizer)
            trainer = {"optimizer": osd, "scaler": scaler.state_dict() if scaler is not None else None,
                       "rng": rng_state()}
            _write_trainer_state(tmp / "trainer.pt", trainer)
            atomic_write_json(tmp / "state.json", {**state, "step": step})
            if final.exists():  # a rerun reaching the same step: swap, never delete first
                old = root / f".step-{step}.old-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            atomic_write_text(root / "latest", f"step-{step}\n")
            prune(root, keep_last_k, keep_steps)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            prev = latest_checkpoint(run_dir)
            error = (f"{final}: checkpoint not written ({exc.strerror or exc}); "
                     f"{'the previous checkpoint ' + prev.name + ' is intact' if prev else 'no earlier checkpoint'}"
                     "; free disk space and rerun with --resume")
    error = broadcast_object(error, world)
    if error:
        raise Phi1Error(error)
    barrier(world)
    return final


def list_steps(root: Path) -> list[int]:
    steps = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / "state.json").exists():
                steps.append(int(m.group(1)))
    return sorted(steps)


def read_best(root: Path) -> dict | None:
    f = root / "best.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def write_best(run_dir: Path, step: int, metric: str, value: float, world: World) -> None:
    if world.is_main:
        atomic_write_json(checkpoints_dir(run_dir) / "best.json", {"step": step, "metric": metric, "value": value})


def prune(root: Path, keep_last_k: int, keep_steps=()) -> list[int]:
    """Delete all but the last K complete checkpoints; the best one and `keep_steps` are always kept."""
    if keep_last_k <= 0:
        return []
    steps = list_steps(root)
    best = read_best(root)
    protected = set(steps[-keep_last_k:]) | ({best["step"]} if best else set()) | set(keep_steps)
    removed = []
    for s in steps:
        if s not in protected:
            shutil.rmtree(root / f"step-{s}", ignore_errors=True)
            removed.append(s)
    for junk in root.glob(".step-*"):  # temp dirs left by a crash mid-save
        shutil.rmtree(junk, ignore_errors=True)
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: the `latest` pointer, else the highest complete step-N."""
    root = checkpoints_dir(run_dir)
    ptr = root / "latest"
    if ptr.exists():
        cand = root / ptr.read_text().strip()
        if (cand / "state.json").exists() and (cand / "trainer.pt").exists():
            return cand
    steps = list_steps(root)
    return root / f"step-{steps[-1]}" if steps else None


def load_state(ckpt: Path) -> tuple[dict, dict]:
    """(state.json, trainer.pt contents) of a checkpoint."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
        trainer = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
    except (OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise Phi1Error(f"{ckpt}: unreadable checkpoint ({exc}); delete it to resume from an earlier one") from None
    return state, trainer


def restore_optimizer(model, optimizer, osd: dict, world: World) -> None:
    """Load an FQN-keyed full optimizer state (from `gather_state`) into a live optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # full_state_dict=True shards the full state over FSDP2 ranks; it needs a process group.
    set_optimizer_state_dict(model, optimizer, optim_state_dict=osd,
                             options=StateDictOptions(full_state_dict=world.strategy == "fsdp2"))
