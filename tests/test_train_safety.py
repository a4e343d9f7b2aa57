"""Training never loses a user's files and fails with one line for every bad input (issue 11).

Real run directories and shard files; the lock test runs two real `phi1 train` processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import phi1
from phi1.cli import main
from safety_support import cli, one_error_line, small_tmpfs
from test_train_support import env_one_thread, pack_stdlib, phi1_cmd  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Path(phi1.__file__).parent / "recipes" / "test-micro.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer_dir, stdlib_slice):
    return pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path_factory.mktemp("packed"))


def argv(run_dir: Path, shards: Path, tokenizer_dir, *sets: str, flags: tuple = ()) -> list[str]:
    """`phi1 train test-micro.yaml` for a short run: 2 steps, no eval, a checkpoint at the end."""
    out = ["train", str(RECIPE), *flags]
    for s in (f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", f"data.train={shards}",
              f"model.tokenizer={tokenizer_dir}", "train.max_steps=2", "eval.interval=0", "checkpoint.interval=0",
              *sets):
        out += ["--set", s]
    return out


def steps_logged(run_dir: Path) -> list[int]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "loss" in r]


# ---- one writer per run directory ---------------------------------------------------------------


def test_second_train_on_one_run_dir_fails_at_once_naming_the_first(tmp_path, shards, tokenizer_dir):
    run_dir = tmp_path / "runs" / "shared"
    gate = tmp_path / "gate"
    # The first run's eval callback waits for `gate` at step 1, so it is certainly still running
    # (holding the lock) however slow the second process is to start.
    first_args = argv(run_dir, shards, tokenizer_dir, "train.max_steps=20", "eval.interval=1",
                      "eval.callback=test_train_support:make_gate_callback", f"eval.callback_args={{gate: '{gate}'}}",
                      "eval.best_metric=gate", "eval.best_mode=max")
    env = {**env_one_thread(), "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                              os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(phi1_cmd(*first_args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        lock = run_dir / ".phi1.lock"
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        t0 = time.time()
        second = subprocess.run(phi1_cmd(*first_args), env=env, capture_output=True, text=True, timeout=60)
        took = time.time() - t0
        assert first.poll() is None
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        one_error_line(second.returncode, lines, f"pid {first.pid}", str(run_dir), "in use")
        gate.write_text("go")
        out, err = first.communicate(timeout=120)
    finally:
        gate.write_text("go")
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert "trained to step 20" in out
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # One writer: every step's train record once, in order, each followed by its eval record
    # (and by a checkpoint record, {step, checkpoint_s}, when that step saved one).
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in recs if "checkpoint_s" not in r] == [s for s in range(1, 21) for _ in (0, 1)]
    assert [r["step"] for r in recs if "checkpoint_s" in r] == sorted({r["step"] for r in recs if "checkpoint_s" in r})
    assert recs[-1]["step"] == 20 and recs[-1]["checkpoint_s"] > 0
    assert not (run_dir / ".phi1.lock").read_text().strip()  # released at the end
    print(f"second process refused after {took:.1f}s (start-up included)")


# ---- a changed config, a new run, a legitimate resume -------------------------------------------


def test_changed_config_is_refused_naming_the_field(tmp_path, shards, tokenizer_dir, capsys):
    run_dir = tmp_path / "runs" / "r"
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir), capsys)
    assert rc == 0, lines
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    ckpt = (run_dir / "checkpoints" / "latest").read_text()

    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "optimizer.lr=0.002", "train.precision=bf16"), capsys)
    one_error_line(rc, lines, "optimizer.lr: 0.003 -> 0.002", "train.precision: 'fp32' -> 'bf16'", "--new-run")
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before and (run_dir / "checkpoints" / "latest").read_text() == ckpt

    # Lowering max_steps is refused too; raising it extends the run (a legitimate resume).
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "train.max_steps=1"), capsys)
    one_error_line(rc, lines, "train.max_steps: 2 -> 1")
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "train.max_steps=3", "run.device=cpu",
                         "checkpoint.keep_last_k=5"), capsys)
    assert rc == 0, lines
    assert steps_logged(run_dir) == [1, 2, 3]

    # --new-run starts afresh beside it and leaves the old run alone.
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "optimizer.lr=0.002", flags=("--new-run",)), capsys)
    assert rc == 0, lines
    new = run_dir.with_name("r-2")
    assert steps_logged(new) == [1, 2] and steps_logged(run_dir) == [1, 2, 3]
    assert "lr: 0.002" in (new / "config.yaml").read_text() and "lr: 0.003" in (run_dir / "config.yaml").read_text()
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, flags=("--new-run", "--resume")), capsys)
    one_error_line(rc, lines, "--new-run and --resume")


def test_foreign_directory_is_never_a_run_dir(tmp_path, shards, tokenizer_dir, capsys):
    run_dir = tmp_path / "home"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("my own notes\n")
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir), capsys)
    one_error_line(rc, lines, str(run_dir), "not a phi1 run")
    assert sorted(os.listdir(run_dir)) == ["metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == "my own notes\n"


# ---- damaged checkpoints --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shards, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("finished")
    run_dir = tmp / "runs" / "done"
    assert main(argv(run_dir, shards, tokenizer_dir)) == 0
    return run_dir


@pytest.mark.parametrize("damage", ["empty", "random", "truncated-weights"])
def test_damaged_checkpoint_is_one_line_naming_the_file(damage, tmp_path, finished_run, shards, tokenizer_dir,
                                                        capsys):
    run_dir = tmp_path / "runs" / "done"
    shutil.copytree(finished_run, run_dir)
    ckpt = run_dir / "checkpoints" / "step-2"
    if damage == "empty":
        (ckpt / "trainer.pt").write_bytes(b"")
        bad = ckpt / "trainer.pt"
    elif damage == "random":
        (ckpt / "trainer.pt").write_bytes(np.random.default_rng(0).bytes(4096))
        bad = ckpt / "trainer.pt"
    else:
        f = ckpt / "model" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        bad = f
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "train.max_steps=3"), capsys)
    one_error_line(rc, lines, str(bad), f"delete {ckpt}")
    if damage == "truncated-weights":  # the same file through `phi1 model info`
        rc, lines = cli(["model", "info", str(ckpt / "model")], capsys)
        one_error_line(rc, lines, str(bad), "truncated")


# ---- shards the model cannot read -----------------------------------------------------------------


def test_out_of_vocabulary_shard_is_one_line_naming_it(tmp_path, shards, tokenizer_dir, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    name = manifest["splits"]["train"]["shards"][0]["file"]
    arr = np.memmap(bad / name, dtype=np.uint16, mode="r+", offset=64)
    arr[100] = 50_000  # the fingerprint still matches: a damaged shard, not another tokenizer
    arr.flush()
    del arr
    run_dir = tmp_path / "runs" / "oov"
    rc, lines = cli(argv(run_dir, bad, tokenizer_dir), capsys)
    one_error_line(rc, lines, str(bad / name), "token id 50000", "re-pack")
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()


# ---- a full disk and crashed writers ---------------------------------------------------------------


def test_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path, shards, tokenizer_dir, capsys):
    # The run's config, marker and metrics fit in 256 KiB; a micro checkpoint (~1 MB) does not.
    with small_tmpfs(tmp_path / "small", "256k") as mnt:
        run_dir = mnt / "run"
        rc, lines = cli(argv(run_dir, shards, tokenizer_dir), capsys)
        line = one_error_line(rc, lines, "No space left on device", str(run_dir / "checkpoints" / "step-2"))
        root = run_dir / "checkpoints"
        leftovers = [p.name for p in root.iterdir()] if root.exists() else []
        assert leftovers == [], leftovers  # no temp directory, no half checkpoint, no `latest`
        assert sorted(p.name for p in run_dir.iterdir()) == [".phi1-output.json", ".phi1.lock", "checkpoints",
                                                              "config.yaml", "metrics.jsonl"]
        print(line)


def test_stale_checkpoint_temps_of_dead_writers_are_removed(tmp_path, finished_run, shards, tokenizer_dir, capsys):
    run_dir = tmp_path / "runs" / "done"
    shutil.copytree(finished_run, run_dir)
    root = run_dir / "checkpoints"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is certainly not running now
    stale = root / f".step-3.phi1-{dead.pid}-abc123.tmp"  # a writer killed mid-save
    live = root / f".step-3.phi1-{os.getpid()}-def456.tmp"  # a writer that is alive: untouched
    for d in (stale, live):
        (d / "model").mkdir(parents=True)
        (d / "trainer.pt").write_bytes(b"partial")
    rc, lines = cli(argv(run_dir, shards, tokenizer_dir, "train.max_steps=3"), capsys)
    assert rc == 0, lines
    assert not stale.exists() and live.exists()
    assert (root / "latest").read_text().strip() == "step-3"
