"""Shared fixtures: a real tokenizer trained on stdlib code and tiny random phi models."""

from __future__ import annotations

import os
import sysconfig
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PHI1_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Embedding caches of the tests go to a fresh folder, never to the user's ~/.cache/phi1.
os.environ.setdefault("PHI1_CACHE_DIR", tempfile.mkdtemp(prefix="phi1-test-cache-"))

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def stdlib_slice() -> list[Path]:
    """A few real stdlib packages: code nobody on the team wrote."""
    return [STDLIB / "json", STDLIB / "email", STDLIB / "collections"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, stdlib_slice) -> Path:
    from phi1.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(stdlib_slice, vocab_size=1024, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random phi model (HF format, 'micro' preset, vocab 1024) with its tokenizer."""
    from phi1.model.create import init_model_dir

    out = tmp_path_factory.mktemp("models") / "tiny"
    init_model_dir("micro", tokenizer_dir, out, seed=0, max_position_embeddings=512)
    return out


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    """(model, tokenizer) of the tiny model, loaded in-process on CPU in float32."""
    from phi1.model import load_for_inference

    return load_for_inference(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one intra-op thread avoids oversubscription stalls. A module that trains asks for
    it once: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def micro_demo(tmp_path_factory, stdlib_slice):
    """The micro demo run once per test process (test_demo.py and test_stage_graph.py read it; their tests
    share an xdist group so one process runs both): killed with SIGKILL as soon as its dedup stage is done,
    then rerun to the end. Returns (recipe, run dir, {stage marker: mtime} finished before the kill,
    the rerun's CompletedProcess)."""
    import json
    import signal
    import subprocess
    import time

    from test_demo import micro_recipe, phi1_cmd

    root = tmp_path_factory.mktemp("micro_demo")
    recipe = micro_recipe(root, stdlib_slice)
    run = root / "run"
    env = {**os.environ, "PHI1_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(phi1_cmd("demo", "--recipe", recipe, "--out", run), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / ".stages" / "dedup.json"

    def dedup_done() -> bool:
        try:
            return json.loads(marker.read_text()).get("status") == "done"
        except (OSError, ValueError):
            return False

    deadline = time.time() + 240
    while not dedup_done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert dedup_done(), "the demo never finished its dedup stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p for p in (run / ".stages").glob("*.json") if json.loads(p.read_text())["status"] == "done"]
    before = {p.name: p.stat().st_mtime_ns for p in done}
    rerun = subprocess.run(phi1_cmd("demo", "--recipe", recipe, "--out", run), env=env, capture_output=True,
                           text=True, timeout=900)
    return recipe, run, before, rerun
