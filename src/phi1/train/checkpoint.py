"""Checkpoints: an HF model directory plus the training state, written atomically.

    runs/NAME/checkpoints/
      step-N/model/          HF format (loads in transformers.AutoModelForCausalLM)
      step-N/trainer.pt      optimizer, grad scaler, RNG states of torch/numpy/python
      step-N/state.json      step, tokens, next sample index, metrics, config
      latest                 "step-N", replaced atomically after step-N is complete
      best.json              {"step", "metric", "value", "selected_on"}; that step is never pruned

A checkpoint is assembled in `.step-N.phi1-PID-*.tmp` and renamed into place, so a crash
or a full disk mid-save leaves the previous checkpoints and `latest` untouched; the temp
directory of a writer that died is removed when the next run starts (its pid is dead).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from phi1.errors import Phi1Error
from phi1.model.hf import save_model_dir
from phi1.model.family import build_model
from phi1.train.distributed import World, barrier, broadcast_object, unwrap
from phi1.utils.io import atomic_write_json, atomic_write_text
from phi1.utils.io import directory_commit
from phi1.utils.safety import clean_stale_temps

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


class _RecordingFile:
    """A file object for torch.save that remembers the OSError behind a failed write.

    torch.save to a path (or to a plain file) turns ENOSPC into a RuntimeError without the errno;
    through this wrapper the original OSError comes back.
    """

    def __init__(self, fh, path: Path):
        self.fh, self.path, self.error = fh, path, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _write_trainer_state(path: Path, obj: dict) -> None:
    """torch.save then fsync (a separate function so tests can make the disk 'fill up' here)."""
    with open(path, "wb") as fh:
        rec = _RecordingFile(fh, path)
        try:
            torch.save(obj, rec)
        except OSError:
            raise
        except Exception:
            if rec.error is not None:
                raise rec.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())


def _disk_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed save (torch and safetensors wrap it), or None for other failures."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        m = re.search(r"os error (\d+)", str(exc))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


_FIX = {errno.ENOSPC: "free disk space and rerun with --resume",
        errno.EDQUOT: "free disk space and rerun with --resume",
        errno.EROFS: "the file system is read-only: make it writable (or set run.out_dir elsewhere) and rerun",
        errno.EACCES: "check the permissions of the run directory and rerun with --resume",
        errno.EPERM: "check the permissions of the run directory and rerun with --resume"}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scaler, tokenizer, state: dict,
                    world: World, keep_last_k: int = 0, keep_steps=()) -> Path:
    """Write checkpoint step-N (rank 0 writes; every rank must call). Returns its path.

    On a full or read-only disk (or any other failure) the temp directory is removed and every
    rank raises a Phi1Error naming the checkpoint and the errno; the previous checkpoints and
    `latest` are untouched.
    """
    msd, osd = gather_state(model, optimizer, world)
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    error, raise_here = None, None
    if world.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            # A rerun reaching the same step swaps the old checkpoint out, never deletes it first.
            with directory_commit(final, replace=True) as tmp:
                cfg = unwrap(model).config
                with torch.device("meta"):
                    shell = build_model(cfg)
                shell.load_state_dict(msd, assign=True)
                save_model_dir(shell, tmp / "model", tokenizer=tokenizer)
                trainer = {"optimizer": osd, "scaler": scaler.state_dict() if scaler is not None else None,
                           "rng": rng_state()}
                _write_trainer_state(tmp / "trainer.pt", trainer)
                atomic_write_json(tmp / "state.json", {**state, "step": step})
            atomic_write_text(root / "latest", f"step-{step}\n")
            prune(root, keep_last_k, keep_steps)
        except Exception as exc:  # noqa: BLE001 (every rank must hear about it, whatever it is)
            disk = _disk_error(exc)
            prev = latest_checkpoint(run_dir)
            intact = f"the previous checkpoint {prev.name} is intact" if prev else "no earlier checkpoint"
            if disk is not None:
                fix = _FIX.get(disk.errno or -1, "fix the disk problem and rerun with --resume")
                error = f"{final}: checkpoint not written ({disk.strerror or disk}); {intact}; {fix}"
            else:
                error = f"{final}: checkpoint not written ({type(exc).__name__}: {exc}); {intact}"
                raise_here = exc
    error = broadcast_object(error, world)
    if raise_here is not None:
        raise raise_here
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


def write_best(run_dir: Path, step: int, metric: str, value: float, world: World,
               selected_on: str | None = None) -> None:
    """best.json: the best step by `metric`, and (when known) the data that metric was measured on."""
    if world.is_main:
        rec = {"step": step, "metric": metric, "value": value}
        if selected_on:
            rec["selected_on"] = selected_on
        atomic_write_json(checkpoints_dir(run_dir) / "best.json", rec)


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
    clean_stale_temps(root)  # temp dirs of a dead writer (a crash mid-save); never a live one's
    return removed


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: the `latest` pointer, else the highest complete step-N."""
    root = checkpoints_dir(run_dir)
    ptr = root / "latest"
    try:
        name = ptr.read_text().strip() if ptr.exists() else ""
    except (OSError, UnicodeDecodeError):
        name = ""  # a damaged pointer: fall back to the highest complete step
    if _STEP_RE.match(name):
        cand = root / name
        if (cand / "state.json").exists() and (cand / "trainer.pt").exists():
            return cand
    steps = list_steps(root)
    return root / f"step-{steps[-1]}" if steps else None


_REF_RE = re.compile(r"^(?P<run>.+)@(?P<step>\d+)$")


def checkpoint_ref(ref: str, where: str = "config.model.init") -> Path | None:
    """The model directory a `RUN@STEP` reference names (RUN/checkpoints/step-STEP/model), or None
    when `ref` is not of that form (a preset or a directory). A missing checkpoint is one error
    naming the steps RUN does have."""
    m = _REF_RE.match(ref)
    if m is None or Path(ref).is_dir():
        return None
    run, step = Path(m.group("run")), int(m.group("step"))
    model = checkpoints_dir(run) / f"step-{step}" / "model"
    if not (model / "config.json").is_file():
        have = list_steps(checkpoints_dir(run))
        why = (f"it has checkpoints at steps {', '.join(map(str, have))}" if have
               else f"{run} holds no checkpoints" if run.is_dir() else f"run directory {run} not found")
        raise Phi1Error(f"{where} = {ref!r}: no checkpoint {model}; {why} (keep a step with checkpoint.keep_steps "
                        "and name it RUN@STEP)")
    return model


def load_state(ckpt: Path) -> tuple[dict, dict]:
    """(state.json, trainer.pt contents) of a checkpoint; a damaged file is one Phi1Error naming it."""
    fix = f"delete {ckpt} to resume from an earlier checkpoint (or use a new run.name to start over)"
    sfile, tfile = ckpt / "state.json", ckpt / "trainer.pt"
    try:
        state = json.loads(sfile.read_text())
    except (OSError, ValueError) as exc:
        raise Phi1Error(f"{sfile}: unreadable checkpoint state ({_short(exc)}); {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "samples" not in state:
        raise Phi1Error(f"{sfile}: not a phi1 checkpoint state (needs step and samples); {fix}")
    try:
        if tfile.stat().st_size == 0:
            raise ValueError("the file is empty")
        trainer = torch.load(tfile, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 (empty, truncated, random bytes: pickle raises many types)
        raise Phi1Error(f"{tfile}: unreadable training state ({_short(exc)}); {fix}") from None
    if not isinstance(trainer, dict) or not {"optimizer", "rng"} <= set(trainer):
        raise Phi1Error(f"{tfile}: not a phi1 training state (needs optimizer and rng); {fix}")
    return state, trainer


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def restore_optimizer(model, optimizer, osd: dict, world: World) -> None:
    """Load an FQN-keyed full optimizer state (from `gather_state`) into a live optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # full_state_dict=True shards the full state over FSDP2 ranks; it needs a process group.
    set_optimizer_state_dict(model, optimizer, optim_state_dict=osd,
                             options=StateDictOptions(full_state_dict=world.strategy == "fsdp2"))
