"""The model/tokenizer/generate CLI as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def phi1(*args, check=False):
    return subprocess.run([sys.executable, "-m", "phi1", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=check)


def test_tokenizer_train_and_autotokenizer(tmp_path, stdlib_slice):
    transformers = pytest.importorskip("transformers")
    r = phi1("tokenizer", "train", "--input", stdlib_slice[0], "--vocab-size", 800, "--out", tmp_path / "tok")
    assert r.returncode == 0, r.stderr
    at = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    from phi1.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "tok")
    code = "def f(x):\n        return x\n\t\tpass\n"
    assert at(code)["input_ids"] == tok.encode(code)
    assert tok.decode(tok.encode(code)) == code
    assert at.eos_token == "<|endoftext|>"
    # Indentation runs are single tokens, as in codegen's tokenizer.
    assert tok.token_to_id(" " * 8) is not None and tok.token_to_id("\t\t") is not None
    assert len(tok.encode("        ")) == 1


def test_model_init_info_generate(tmp_path, tokenizer_dir):
    r = phi1("model", "init", "--preset", "micro", "--tokenizer", tokenizer_dir, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    info = json.loads(phi1("model", "info", tmp_path / "m", "--json", check=True).stdout)
    assert info["preset"] == "micro" and info["vocab_size"] % 64 == 0 and info["vocab_size"] >= 1024
    assert info["parameters"] > 0 and info["tokenizer"]["eos"] == "<|endoftext|>"
    r = subprocess.run([sys.executable, "-m", "phi1", "generate", "--model", str(tmp_path / "m"), "--prompt",
                        "def add(a, b):", "--max-new-tokens", "12"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference

    model, tok = load_for_inference(tmp_path / "m", "cpu", "float32")
    [c] = generate(model, tok, ["def add(a, b):"], max_new_tokens=12)
    assert r.stdout.decode("utf-8") == c.text + "\n"  # bytes: a random model may emit "\r"


@pytest.mark.parametrize("case", ["missing_dir", "no_config", "bad_json", "unknown_preset", "vocab_too_big",
                                  "not_phi"])
def test_bad_input_is_one_clear_line(case, tmp_path, tiny_model_dir, tokenizer_dir):
    import shutil

    if case == "missing_dir":
        r, expect = phi1("model", "info", tmp_path / "nope"), "model directory not found"
    elif case == "no_config":
        (tmp_path / "d").mkdir()
        r, expect = phi1("generate", "--model", tmp_path / "d", "--prompt", "x"), "config.json: missing"
    elif case == "bad_json":
        d = tmp_path / "d"
        shutil.copytree(tiny_model_dir, d)
        (d / "config.json").write_text("{not json")
        r, expect = phi1("model", "info", d), "malformed JSON"
    elif case == "unknown_preset":
        r = phi1("model", "init", "--preset", "phi-9", "--tokenizer", tokenizer_dir, "--out", tmp_path / "m")
        expect = "unknown preset 'phi-9'"
    elif case == "vocab_too_big":
        d = tmp_path / "d"
        shutil.copytree(tiny_model_dir, d)
        # A tokenizer larger than the model: shrink the model's declared vocab and its weights.
        from phi1.model.hf import load_model_dir, save_model_dir

        m = load_model_dir(d)
        small = type(m)(m.config.replace(vocab_size=512))
        from phi1.tokenizer import load_tokenizer

        save_model_dir(small, d, tokenizer=load_tokenizer(d))
        r, expect = phi1("generate", "--model", d, "--prompt", "x"), "tokenizer has 1024 tokens but the model's vocab_size is 512"
    else:
        d = tmp_path / "d"
        shutil.copytree(tiny_model_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"] = "llama"
        (d / "config.json").write_text(json.dumps(cfg))
        r, expect = phi1("model", "info", d), "is not a phi model"
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0], lines[0]


def test_a_sharded_preset_saves_into_the_folder_model_init_claims(tmp_path, tokenizer_dir, monkeypatch, capsys):
    """B1: `model init` claims --out (its marker) before saving; a model over MAX_SHARD_BYTES is saved
    sharded into that claimed folder, and a rerun replaces its own shards. A folder holding another
    layout's weights is refused before any weight is built. (MAX_SHARD_BYTES made small: a micro
    preset stands in for phi-3-mini.)"""
    import json

    import torch
    import transformers

    from phi1.cli import main
    from phi1.model import family, hf
    from phi1.model.hf import load_model_dir

    monkeypatch.setattr(hf, "MAX_SHARD_BYTES", 200_000)
    out = tmp_path / "m"
    argv = ["model", "init", "--preset", "micro", "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    ids = torch.arange(12).view(1, 12)
    ours = load_model_dir(out).eval()(ids)
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(ids).logits
    assert (ours - ref).abs().max().item() < 1e-5
    first = {f: (out / f).read_bytes() for f in shards}
    assert main(argv + ["--seed", "1"]) == 0, capsys.readouterr().err  # a rerun: its own shards replaced
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
    assert any((out / f).read_bytes() != first[f] for f in shards)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"user weights")
    built = []
    real_build = family.build_model
    monkeypatch.setattr("phi1.model.create.build_model",
                        lambda cfg: built.append(cfg) or real_build(cfg))
    rc = main(["model", "init", "--preset", "micro", "--tokenizer", str(tokenizer_dir), "--out", str(other),
               "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.safetensors, which would be loaded instead" in err, err
    assert not built and (other / "model.safetensors").read_bytes() == b"user weights"
