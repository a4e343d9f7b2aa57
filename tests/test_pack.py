"""`phi1 data pack`: real tokenization of stdlib code into shards, split stability, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phi1.data import pack as pack_mod
from phi1.data.shards import HEADER_BYTES, dtype_for_vocab, open_shard, open_split, read_header, write_shard
from phi1.errors import Phi1Error
from phi1.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, stdlib_slice):
    """The stdlib slice plus a JSONL file with one malformed line and one record without text."""
    d = tmp_path_factory.mktemp("corpus")
    recs = [{"id": f"doc{i}", "text": f"def f{i}(x):\n    return x * {i}\n"} for i in range(40)]
    lines = [json.dumps(r) for r in recs] + ["{not json", json.dumps({"id": "x", "meta": {}})]
    (d / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return [stdlib_slice[0], stdlib_slice[2], d / "docs.jsonl"]


def test_pack_round_trip_and_split(tmp_path, tokenizer_dir, corpus):
    out = tmp_path / "shards"
    m = pack_mod.pack(tokenizer_dir, corpus, out, workers=2, val_fraction=0.2, shard_tokens=10_000,
                      chunk_bytes=8192, skip_bad_lines=True)
    tok = load_tokenizer(tokenizer_dir)
    assert m["dtype"] == "uint16" and m["tokenizer"]["fingerprint"] == tok.fingerprint()
    assert m["skipped_records"] == 2 and m["bad_lines"]["bad_json"] == 1 and m["bad_lines"]["no_text"] == 1
    train, val = open_split(out, "train"), open_split(out, "val")
    assert len(train.arrays) > 1  # rolled over to several shards
    assert m["splits"]["val"]["documents"] > 0
    stream = np.concatenate(train.arrays + val.arrays)
    n_docs = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert int((stream == tok.eos_id).sum()) == n_docs  # one EOS after every document
    # Every JSONL document decodes back to its text, on exactly the side its hash says.
    for split, arrays in (("train", train.arrays), ("val", val.arrays)):
        text = tok.decode(np.concatenate(arrays).tolist())
        for i in range(40):
            doc = f"def f{i}(x):\n    return x * {i}\n"
            assert (doc + "<|endoftext|>" in text) == (pack_mod.is_val(doc, 0.2) == (split == "val"))
    # The split is a function of content: one worker and other chunking give the same token streams.
    out1 = tmp_path / "one"
    pack_mod.pack(tokenizer_dir, corpus, out1, workers=1, val_fraction=0.2, skip_bad_lines=True)
    for split in ("train", "val"):
        a = np.concatenate(open_split(out, split).arrays)
        b = np.concatenate(open_split(out1, split).arrays)
        assert np.array_equal(a, b)


def _tokens(out, split="train"):
    return np.concatenate(open_split(out, split).arrays)


def test_interrupted_repack_keeps_the_old_pack(tmp_path, tokenizer_dir, corpus, monkeypatch):
    out = tmp_path / "shards"
    first = pack_mod.pack(tokenizer_dir, corpus, out, workers=1, shard_tokens=20_000, skip_bad_lines=True)
    before = _tokens(out)
    calls = {"n": 0}
    real = pack_mod.encode_chunk

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C mid-pack
        return real(*a, **kw)

    monkeypatch.setattr(pack_mod, "encode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        pack_mod.pack(tokenizer_dir, corpus, out, workers=1, shard_tokens=20_000, chunk_bytes=4096,
                      skip_bad_lines=True)
    # The old pack is still the committed one, whole; nothing of the broken redo is left.
    assert np.array_equal(_tokens(out), before)
    assert not list(out.glob(".*.tmp"))
    listed = {sh["file"] for s in ("train", "val") for sh in first["splits"][s]["shards"]}
    assert {f.name for f in out.glob("*.bin")} == listed
    monkeypatch.setattr(pack_mod, "encode_chunk", real)
    again = pack_mod.pack(tokenizer_dir, corpus, out, workers=1, shard_tokens=20_000, skip_bad_lines=True)
    for s in ("train", "val"):
        assert again["splits"][s]["tokens"] == first["splits"][s]["tokens"]
        assert again["splits"][s]["documents"] == first["splits"][s]["documents"]
    assert np.array_equal(_tokens(out), before)
    now = {sh["file"] for s in ("train", "val") for sh in again["splits"][s]["shards"]}
    assert {f.name for f in out.glob("*.bin")} == now and not (now & listed)  # the old generation is gone


def test_shard_header_checks(tmp_path):
    assert dtype_for_vocab(51200) == np.uint16 and dtype_for_vocab(100_000) == np.uint32
    big = np.array([0, 70_000, 5, 99_999], dtype=np.uint32)
    p = tmp_path / "a.bin"
    write_shard(p, big)
    assert read_header(p) == (np.dtype(np.uint32), 4)
    assert open_shard(p).tolist() == big.tolist()
    with open(p, "ab") as fh:  # a torn or padded file is never read as a shard
        fh.write(b"\0")
    with pytest.raises(Phi1Error, match="truncated or padded"):
        read_header(p)
    p.write_bytes(b"x" * HEADER_BYTES)
    with pytest.raises(Phi1Error, match="bad magic"):
        read_header(p)


def test_pack_cli(tmp_path, tokenizer_dir, stdlib_slice):
    env = {**os.environ, "PHI1_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "pack", "--tokenizer", str(tokenizer_dir),
                        "--input", str(stdlib_slice[0]), "--out", str(out), "--workers", "2",
                        "--val-fraction", "0.1"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "MB/s" in r.stdout and (out / "manifest.json").exists()
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "pack", "--tokenizer", str(tokenizer_dir),
                        "--input", str(tmp_path / "nope"), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "nope: not found" in r.stderr and "Traceback" not in r.stderr
