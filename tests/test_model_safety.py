"""`phi1 model init` never replaces a model it did not write; damaged weights are one line (issue 11)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safety_support import cli, one_error_line


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path, tiny_model_dir) -> Path:
    """A model directory as training exports it (no phi1 output marker), plus the user's own notes."""
    d = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, d, ignore=shutil.ignore_patterns(".phi1*"))
    (d / "NOTES.md").write_text("trained for 3 days on 8 GPUs\n")
    return d


def test_init_refuses_a_trained_model_and_leaves_it_byte_identical(trained, tokenizer_dir, capsys):
    before = snapshot(trained)
    rc, lines = cli(["model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", trained], capsys)
    one_error_line(rc, lines, str(trained), "not empty", "--overwrite")
    assert snapshot(trained) == before  # hidden files included: not even a marker or a lock was added


def test_init_overwrite_replaces_only_its_own_files(trained, tokenizer_dir, capsys):
    before = snapshot(trained)
    rc, lines = cli(["model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", trained,
                     "--seed", "5", "--overwrite"], capsys)
    assert rc == 0, lines
    after = snapshot(trained)
    assert after["NOTES.md"] == before["NOTES.md"]  # a file it did not create is still there
    assert after["model.safetensors"] != before["model.safetensors"]  # the weights were replaced, as asked
    assert json.loads(after[".phi1-output.json"])["owner"] == "model init"
    assert not [n for n in after if ".tmp" in n]
    # Now the directory is one `model init` wrote: a rerun needs no --overwrite.
    rc, lines = cli(["model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", trained], capsys)
    assert rc == 0, lines
    assert snapshot(trained)["NOTES.md"] == before["NOTES.md"]


def test_init_into_a_sharded_download_is_refused_even_with_overwrite(tmp_path, tokenizer_dir, capsys):
    d = tmp_path / "download"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    rc, lines = cli(["model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", d,
                     "--overwrite"], capsys)
    one_error_line(rc, lines, "model.safetensors.index.json", "instead of")
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".phi1")) == ["model.safetensors.index.json"]


def test_init_out_dot_in_a_non_empty_cwd_is_one_line(tmp_path, tokenizer_dir):
    (tmp_path / "main.py").write_text("print('mine')\n")
    r = subprocess.run([sys.executable, "-m", "phi1", "model", "init", "--preset", "micro", "--tokenizer",
                        str(tokenizer_dir), "--out", "."], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    one_error_line(r.returncode, lines, "--out .", "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.py"]


def test_init_out_a_file_is_one_line(tmp_path, tokenizer_dir, capsys):
    f = tmp_path / "model.bin"
    f.write_bytes(b"mine")
    rc, lines = cli(["model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", f], capsys)
    one_error_line(rc, lines, "not a directory")
    assert f.read_bytes() == b"mine"


@pytest.mark.parametrize("command", ["info", "generate"])
def test_truncated_weights_are_one_line(command, tmp_path, tiny_model_dir, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    args = ["model", "info", d] if command == "info" else ["generate", "--model", d, "--prompt", "x", "--device", "cpu"]
    rc, lines = cli(args, capsys)
    one_error_line(rc, lines, str(w), "truncated")


def test_save_model_dir_into_an_existing_dir_keeps_foreign_files(tmp_path, tiny_model_dir):
    from phi1.model.hf import load_model_dir, save_model_dir

    d = tmp_path / "export"
    d.mkdir()
    (d / "README.md").write_text("model card\n")
    save_model_dir(load_model_dir(tiny_model_dir), d)
    assert (d / "README.md").read_text() == "model card\n"
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {p.name for p in d.iterdir()}
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")] and load_model_dir(d) is not None


@pytest.mark.parametrize("flag, value, expect", [
    ("--temperature", "nan", "--temperature = nan: must be a finite number"),
    ("--temperature", "-1", "--temperature = -1.0"),
    ("--seed", "99999999999999999999999", "--seed = 99999999999999999999999: must be an integer in"),
    ("--top-p", "0", "--top-p = 0.0: must be in (0, 1]"),
    ("--top-k", "-3", "--top-k = -3"),
    ("--max-new-tokens", "0", "--max-new-tokens = 0"),
])
def test_generate_sampling_flags_are_checked_before_the_model_loads(flag, value, expect, tmp_path, capsys):
    """One validator (phi1.infer.settings) for generate, serve's engine, eval and the library: a bad setting is
    one line and exit 2, here before the model directory is even read (it does not exist)."""
    rc, lines = cli(["generate", "--model", tmp_path / "absent", "--prompt", "x", flag, value], capsys)
    one_error_line(rc, lines, expect)


@pytest.mark.parametrize("flag, value, expect", [
    ("--temperature", "nan", "sampling temperature = nan: must be a finite number"),
    ("--top-p", "1.5", "sampling top_p = 1.5: must be in (0, 1]"),
    ("--max-tokens", "0", "sampling max_tokens = 0: must be an integer >= 1"),
])
def test_synth_sampling_goes_through_the_same_validator(flag, value, expect, tmp_path, capsys):
    """`phi1 synth` checks its spec's sampling with the flags' overrides before any request is sent."""
    rc, lines = cli(["synth", "stories", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--count", "2",
                     "--out", tmp_path / "s.jsonl", flag, value], capsys)
    one_error_line(rc, lines, expect)
    assert not (tmp_path / "s.jsonl").exists()


def test_one_sampling_validator_for_every_entry_point():
    """The library's SamplingParams, the serving engine's check and eval's GenerationConfig refuse the same
    settings with the same words."""
    from phi1.errors import Phi1Error
    from phi1.eval.benchmark import GenerationConfig
    from phi1.infer.engine import SeqParams, check_params
    from phi1.infer.generate import SamplingParams

    bad = [dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_p=0.0), dict(top_p=float("nan")),
           dict(top_k=-1), dict(seed=2**64), dict(seed=-(2**63) - 1), dict(max_new_tokens=0)]
    for kw in bad:
        with pytest.raises(Phi1Error) as lib:
            SamplingParams(**kw).validate()
        with pytest.raises(ValueError) as engine:
            check_params(SeqParams(kw.get("max_new_tokens", 8), kw.get("temperature", 0.0), kw.get("top_p", 1.0),
                                   kw.get("top_k", 0), (), kw.get("seed")))
        assert str(lib.value) == str(engine.value)
    with pytest.raises(Phi1Error, match="temperature = nan"):
        GenerationConfig(temperature=float("nan")).validate()
    SamplingParams(seed=2**64 - 1, temperature=0.5).validate()
