"""The run directory: one writer at a time, never a foreign directory, never a silently changed config.

`take_run_dir` runs before the trainer writes anything (rank 0 does the work, every rank hears
the outcome):

- `--new-run` with a directory that already holds a run picks the first free sibling
  `NAME-2`, `NAME-3`, ... (created with an exclusive mkdir, so two new runs never share one);
- a non-empty directory that is not a phi1 training run (no `.phi1-output.json` naming
  `train`, no `config.yaml`) is refused: training never writes among a user's files;
- an exclusive `OutputLock` (`RUN/.phi1.lock`) is held for the whole run: a second `phi1 train`
  on the same directory fails at once naming the first one's pid (the kernel drops the lock
  when the holder dies, so a killed run never blocks its resume);
- temp directories of dead writers (`.step-N.phi1-PID-*.tmp`) are removed.

`check_config_unchanged` (called by the trainer once it knows the checkpoint) refuses a rerun
whose config differs from the run's `config.yaml` in anything that changes what is trained,
naming each changed field; `RESUME_MAY_CHANGE` lists what a resume may change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from phi1.errors import Phi1Error
from phi1.train.config import TrainConfig
from phi1.train.distributed import World, broadcast_object
from phi1.utils.safety import (OutputLock, user_entries, claim_output_dir, clean_stale_temps,
                               describe_oserror, read_marker)

RUN_OWNER = "train"
log = logging.getLogger(__name__)

# Fields a resumed run may change: where and how fast it runs, how often it logs, evaluates and
# checkpoints. Everything else (model, data, optimizer, schedule, batch, precision, seed, best
# metric) defines the run; changing it needs a new run.
RESUME_MAY_CHANGE = frozenset({
    "run.device", "train.micro_batch", "train.compile", "train.activation_checkpointing", "train.log_interval",
    "eval.interval", "eval.batches", "checkpoint.interval", "checkpoint.keep_last_k", "checkpoint.keep_steps",
    "distributed.strategy", "distributed.backend",
})
# May be raised (to extend a finished run), never lowered.
RESUME_MAY_RAISE = frozenset({"train.max_steps", "train.max_tokens"})
# The run's location: not part of its identity (a moved run directory still resumes).
LOCATION = frozenset({"run.out_dir", "run.name"})


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` already holds (part of) a training run: our marker, or (a run made before
    markers existed) a config.yaml with the training config's sections."""
    if (read_marker(run_dir) or {}).get("owner") == RUN_OWNER:
        return True
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(old, dict) and {"run", "model", "data", "train"} <= set(old)


def _new_sibling(run_dir: Path) -> Path:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for i in range(2, 10_000):
        cand = run_dir.with_name(f"{run_dir.name}-{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise Phi1Error(f"{run_dir}: no free sibling name {run_dir.name}-N; set run.name")


def _take(cfg: TrainConfig, new_run: bool, resume: bool) -> OutputLock:
    if new_run and resume:
        raise Phi1Error("--new-run and --resume contradict each other: --resume continues the run in "
                        f"{cfg.run_dir}, --new-run starts another; give one")
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise Phi1Error(f"{run_dir}: the run directory (run.out_dir/run.name) is a file; set run.name")
    if new_run and run_dir.is_dir() and (holds_run(run_dir) or user_entries(run_dir)):
        fresh = _new_sibling(run_dir)
        log.info(f"--new-run: {run_dir} holds a run; starting a new run in {fresh}")
        cfg.run.name = fresh.name
        run_dir = cfg.run_dir
    if run_dir.is_dir() and user_entries(run_dir) and not holds_run(run_dir):
        marker = read_marker(run_dir)
        whose = f"written by `phi1 {marker['owner']}`" if marker and marker.get("owner") else "not a phi1 run"
        raise Phi1Error(f"{run_dir}: the run directory is not empty and is {whose} (no config.yaml); "
                        "set run.name or run.out_dir to a new directory (training never writes among other files)")
    lock = OutputLock(run_dir, is_dir=True, what="run directory").acquire()
    try:
        claim_output_dir(run_dir, RUN_OWNER, overwrite=True, flag="run directory")  # marks (or adopts) the run
        clean_stale_temps(run_dir / "checkpoints")
    except OSError as exc:
        lock.release()
        raise Phi1Error(f"{run_dir}: cannot prepare the run directory: {describe_oserror(exc)}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def take_run_dir(cfg: TrainConfig, world: World, *, new_run: bool = False, resume: bool = False) -> OutputLock | None:
    """Lock (and, with `new_run`, choose) the run directory; returns rank 0's lock (None elsewhere).

    Under torchrun only rank 0 locks; the other ranks get its outcome (the run name, or the
    error) by broadcast, so every rank fails together or goes on together.
    """
    lock, error = None, None
    if world.is_main:
        try:
            lock = _take(cfg, new_run, resume)
        except Phi1Error as exc:
            error = str(exc)
    error, name = broadcast_object((error, cfg.run.name), world)
    if error:
        raise Phi1Error(error)
    cfg.run.name = name
    return lock


# ---------------------------------------------------------------------------------------------
# A changed config on rerun


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "callback_args":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _norm_path(p):
    if isinstance(p, str) and p and os.path.exists(p):
        return os.path.realpath(p)
    return p


def _normalize(flat: dict) -> dict:
    out = dict(flat)
    for key in ("model.init", "model.tokenizer"):
        if key in out:
            out[key] = _norm_path(out[key])
    for key in ("data.train", "data.val"):
        if isinstance(out.get(key), list):
            out[key] = [{**s, "path": _norm_path(s.get("path"))} if isinstance(s, dict) else _norm_path(s)
                        for s in out[key]]
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """`field: old -> new` for every change a resume may not make (see RESUME_MAY_CHANGE)."""
    a, b = _normalize(_flat(old)), _normalize(_flat(new))
    changes = []
    for key in b:
        if key not in a or key in LOCATION or key in RESUME_MAY_CHANGE or a[key] == b[key]:
            continue
        if key in RESUME_MAY_RAISE and isinstance(a[key], int) and isinstance(b[key], int) and b[key] > a[key]:
            continue
        shown_a, shown_b = _flat(old).get(key), _flat(new).get(key)
        note = " (a run may be extended, not shortened)" if key in RESUME_MAY_RAISE else ""
        changes.append(f"{key}: {shown_a!r} -> {shown_b!r}{note}")
    return changes


def check_config_unchanged(cfg: TrainConfig, run_dir: Path, ckpt_state_config: dict | None = None) -> None:
    """Refuse a rerun whose config changes what the run in `run_dir` trains."""
    f = run_dir / "config.yaml"
    old = None
    if f.exists():
        try:
            old = yaml.safe_load(f.read_text())
        except (OSError, yaml.YAMLError):
            old = None
    if not isinstance(old, dict):
        old = ckpt_state_config
    if not isinstance(old, dict):
        return
    changes = config_changes(old, cfg.to_dict())
    if changes:
        raise Phi1Error(
            f"{run_dir}: the config differs from the run's {'config.yaml' if f.exists() else 'checkpoint'} "
            f"({'; '.join(changes)}); rerun with the run's config to resume it, or pass --new-run to start a "
            f"new run beside it (or set another run.name)")


__all__ = ["RESUME_MAY_CHANGE", "RESUME_MAY_RAISE", "RUN_OWNER", "check_config_unchanged", "config_changes",
           "holds_run", "take_run_dir"]
