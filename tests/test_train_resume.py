"""Exact resume: a run killed with SIGKILL and restarted matches an uninterrupted run at every step."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import phi1
from test_train_support import env_one_thread, losses, pack_stdlib, phi1_cmd, run

RECIPE = Path(phi1.__file__).parent / "recipes" / "test-micro.yaml"


def cmd(run_dir: Path, shards: Path, tokenizer_dir, *extra: str) -> list[str]:
    return phi1_cmd("train", str(RECIPE), "--set", f"run.out_dir={run_dir.parent}", "--set", f"run.name={run_dir.name}",
                    "--set", f"data.train={shards}", "--set", f"model.tokenizer={tokenizer_dir}",
                    "--set", "train.max_steps=30", *extra)


def records(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            pass
    return out


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tokenizer_dir, stdlib_slice):
    shards = pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path / "shards")
    ref = tmp_path / "ref"
    run(cmd(ref, shards, tokenizer_dir))

    victim = tmp_path / "victim"
    proc = subprocess.Popen(cmd(victim, shards, tokenizer_dir), env=env_one_thread(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(r.get("step", 0) >= 7 for r in records(victim)):  # past the step-5 checkpoint, mid-interval
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(r["step"] for r in records(victim))
    assert 7 <= killed_at < 30
    latest = (victim / "checkpoints" / "latest").read_text().strip()
    assert latest in ("step-5", "step-10", "step-15")

    # Rerunning into the run directory resumes (no flag needed); --resume insists on a checkpoint.
    out = run(cmd(victim, shards, tokenizer_dir, "--resume"))
    assert "trained to step 30" in out.stdout
    a, b = losses(ref), losses(victim)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    assert a == b  # bit-identical, dropout included (test-micro uses dropout 0.1)
    val_a = [r["val_loss"] for r in records(ref) if "val_loss" in r]
    val_b = [r["val_loss"] for r in records(victim) if "val_loss" in r]
    assert val_a == val_b and len(val_a) == 3
