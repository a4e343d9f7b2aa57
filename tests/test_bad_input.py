"""Issue 30 §4: bad input gets exit 2 and one line that names the file and the fix, with nothing left
behind; each case here was an internal error (exit 1) or a misleading line before."""

from __future__ import annotations

import json
import os
import sys

import pytest

from phi1.cli import main

DEEP = 20_000  # past json's and PyYAML's recursion limit and orjson's depth 1024


def _one_line(capsys, rc, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("phi1: error:") and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], err
    return err[0]


def _nested(path):
    path.write_text('{"text": "def f():\\n    return 1\\n"}\n{"text": ' + "[" * DEEP + "]" * DEEP + "}\n")
    return path


def test_deeply_nested_json_is_a_bad_line_in_every_reader(tmp_path, capsys, tiny_model_dir, tokenizer_dir):
    nested = _nested(tmp_path / "n.jsonl")
    first = tmp_path / "first.jsonl"  # samples are checked as they are read: the nested line comes first
    first.write_text('{"task_id": "HumanEval/0", "completion": ' + "[" * DEEP + "]" * DEEP + "}\n")
    cases = [
        (["data", "pack", "--tokenizer", str(tokenizer_dir), "--input", str(nested), "--out", str(tmp_path / "p")],
         "n.jsonl:2"),
        (["tokenizer", "train", "--input", str(nested), "--out", str(tmp_path / "t")], "n.jsonl:2"),
        (["inspect", "neurons", "--model", str(tiny_model_dir), "--corpus", str(nested), "--out", str(tmp_path / "i")],
         "n.jsonl:2"),
        (["eval", "execute", "--samples", str(first), "--out", str(tmp_path / "r.jsonl")], "first.jsonl:1"),
        (["synth", "validate", "--kind", "exercises", "--input", str(nested), "--out", str(tmp_path / "v.jsonl")],
         "n.jsonl:2"),
    ]
    for argv, where in cases:
        line = _one_line(capsys, main(argv), where)
        assert "nested too deeply" in line, line
    assert not [p for p in tmp_path.iterdir() if p.name not in ("n.jsonl", "first.jsonl") and not p.name.startswith(".")]
    # With --skip-bad-lines the line is skipped and counted, not fatal.
    rc = main(["data", "dedup", str(nested), "--out", str(tmp_path / "d.jsonl"), "--skip-bad-lines"])
    assert rc == 0
    assert "bad_json=1" in capsys.readouterr().err
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 1


def test_absurd_numbers_are_refused_before_anything_is_built(tmp_path, capsys, tiny_model_dir, tokenizer_dir):
    (tmp_path / "c.jsonl").write_text('{"text": "def f(x):\\n    return x\\n"}\n')
    _one_line(capsys, main(["model", "init", "--preset", "micro", "--tokenizer", str(tokenizer_dir),
                            "--out", str(tmp_path / "m"), "--seed", str(2**64)]), "--seed", "18446744073709551615")
    _one_line(capsys, main(["inspect", "neurons", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "c.jsonl"),
                            "--out", str(tmp_path / "i"), "--top-k", "100000000"]), "--top-k 100000000", "GiB")
    _one_line(capsys, main(["tokenizer", "train", "--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t"),
                            "--min-frequency", str(2**64)]), "--min-frequency")
    _one_line(capsys, main(["tokenizer", "train", "--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t"),
                            "--vocab-size", "100000000"]), "--vocab-size 100000000: too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # no folder claimed and left empty


def _pipeline(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(f"workdir: {tmp_path / 'work'}\nstages:\n  - name: collect\n    sources: [{src}]\n"
                    "  - name: dedup\n")
    return pipe


def test_a_missing_executor_is_named_before_any_stage_folder(tmp_path, capsys, monkeypatch):
    pipe = _pipeline(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    _one_line(capsys, main(["data", "run", str(pipe), "--executor", "ray"]), "--executor ray needs the package ray",
              "pip install")
    assert not (tmp_path / "work").exists()
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    _one_line(capsys, main(["data", "run", str(pipe), "--executor", "slurm", "--slurm-partition", "p"]),
              "sbatch not found on PATH", "--dry-run")
    assert not (tmp_path / "work").exists()


def test_serve_without_fastapi_names_the_package(tmp_path, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    line = _one_line(capsys, main(["serve", "--model", str(tiny_model_dir), "--port", "0"]), "fastapi")
    assert "pip install" in line


def test_a_full_disk_during_export_names_the_file_and_enospc(tmp_path, capsys, monkeypatch, tiny_model_dir):
    pytest.importorskip("gguf")
    import shutil
    from collections import namedtuple

    import gguf

    def short_write(self, *a, **kw):
        raise OSError("262144 requested and 168704 written")  # numpy's short write: no errno, no path

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", short_write)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 4096))
    out = tmp_path / "m.gguf"
    _one_line(capsys, main(["export", "gguf", "--model", str(tiny_model_dir), "--out", str(out), "--no-check"]),
              str(out), "ENOSPC", "free some space")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_non_utf8_chat_files_are_named(tmp_path, capsys, tokenizer_dir):
    from phi1.data.chat import read_conversations
    from phi1.errors import Phi1Error

    bad = tmp_path / "chat.jsonl"
    bad.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(Phi1Error, match=r"chat.jsonl:1: not UTF-8"):
        read_conversations(bad)
    tpl = tmp_path / "t.jinja"
    tpl.write_bytes(b"{{ 'caf\xe9' }}")
    _one_line(capsys, main(["model", "init", "--preset", "micro", "--tokenizer", str(tokenizer_dir), "--out",
                            str(tmp_path / "m"), "--chat-template", str(tpl)]), "t.jinja", "not UTF-8")


def test_compare_checks_its_sandbox_settings_before_generating(tmp_path, capsys, monkeypatch, tiny_model_dir):
    import phi1.inspect.compare as compare

    def no_generation(*a, **kw):
        raise AssertionError("generated before the settings were checked")

    monkeypatch.setattr(compare, "complete", no_generation)
    for flag in ("--workers", "--timeout"):
        _one_line(capsys, main(["compare", "--base", str(tiny_model_dir), "--tuned", str(tiny_model_dir),
                                "--out", str(tmp_path / "c"), flag, "0"]), f"{flag}: 0")


def test_dpo_pairs_whose_chosen_equals_rejected_are_counted_and_skipped_or_refused(tmp_path, tiny_model_dir):
    from phi1.chat import PHI3_TEMPLATE, ChatTemplate
    from phi1.errors import Phi1Error
    from phi1.tokenizer import load_tokenizer
    from phi1.train.dpo import PreferenceData

    tok = load_tokenizer(tiny_model_dir)
    template = ChatTemplate(PHI3_TEMPLATE, bos_token=tok.bos_token, eos_token=tok.eos_token)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "def add(a, b):", "chosen": " return a + b", "rejected": " return a - b"},
        {"prompt": "def one():", "chosen": " return 1", "rejected": " return 1"},
        {"prompt": "def two():", "chosen": " return 2", "rejected": " return 2"},
    ]))
    skip = PreferenceData([str(f)], tok, template, max_len=64)
    assert skip.identical == 2 and len(skip.pairs) == 1
    keep = PreferenceData([str(f)], tok, template, max_len=64, identical="keep")
    assert keep.identical == 2 and len(keep.pairs) == 3
    with pytest.raises(Phi1Error, match="record 2: chosen equals rejected"):
        PreferenceData([str(f)], tok, template, max_len=64, identical="refuse")
    only_same = tmp_path / "same.jsonl"
    only_same.write_text(json.dumps({"prompt": "p", "chosen": " x", "rejected": " x"}) + "\n")
    with pytest.raises(Phi1Error, match="no preference records .1 pair"):
        PreferenceData([str(only_same)], tok, template, max_len=64)
    assert os.path.exists(f)
