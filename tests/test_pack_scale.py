"""`phi1 data pack` at scale: cut documents keep their ids, one huge document keeps memory flat, shard
directories of the data engine pack like the plain JSONL they hold, and workers do not oversubscribe."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from phi1.data import pack as pack_mod
from phi1.data.shards import open_split
from phi1.errors import Phi1Error
from phi1.tokenizer import load_tokenizer


def real_code(dirs, limit: int | None = None) -> list[str]:
    """The .py files under `dirs` (stdlib packages), sorted, as texts."""
    texts, n = [], 0
    for d in dirs:
        for f in sorted(d.rglob("*.py")):
            texts.append(f.read_text(encoding="utf-8"))
            n += len(texts[-1])
            if limit and n >= limit:
                return texts
    return texts


def stream(out, split="train") -> np.ndarray:
    arrays = open_split(out, split).arrays
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint16)


def expected_stream(tok, docs: list[str]) -> list[int]:
    """What pack must write: each document's `encode` ids, then EOS."""
    return [i for d in docs for i in tok.encode(d) + [tok.eos_id]]


# ---- cutting long documents ------------------------------------------------------------------------


TRICKY = (
    "x = 1 \ny = 2\t\nz = 3\n\n\nclass A:\n    pass\n"            # whitespace before newlines: never cut there
    "s = 'it''s'  # don't, won't, we'll, they're, I'm, you've, he'd\n"
    "EOS = '<|endoftext|>'; EOS2 = \"<|endoftext|>x<|endoftext|>\"\n"   # the special token spelt out in code
    "caf\u00e9 = '\u00fcber \u4e2d\u6587 \U0001f600'\nr = \u03bb(1)\n"
    "x\r\ny = 1\r\n\r\nv = [1,2,3]+[4.5e6,0x1F]\n"
)


def test_cut_documents_give_the_whole_documents_ids(tokenizer_dir, stdlib_slice):
    """Cut every few hundred characters on real stdlib code (and a few hard cases), the pieces' ids are
    exactly the whole text's: the cut rule in pack.py holds for this tokenizer, not just in theory."""
    tok = load_tokenizer(tokenizer_dir)
    guard = pack_mod.cut_guard(tok)
    assert guard == ("<|endoftext|>",)  # the whitespace-run tokens cannot span a cut; EOS can
    code = "".join(real_code(stdlib_slice[:2], limit=600_000))
    minified = json.dumps([{"k": i, "v": [i, str(i) * 3, {"x": None}]} for i in range(20_000)])  # one long line
    for text in (code + TRICKY * 50, minified, TRICKY * 400):
        cuts = pack_mod.cut_points(text, 300, guard)
        assert len(cuts) > len(text) // 2000, "too few cuts to test anything"
        for b in cuts:  # each cut is one of the two safe kinds, never inside an added token
            newline = text[b - 1] == "\n" and "!" <= text[b - 2] <= "~" and "!" <= text[b] <= "~"
            punct = text[b - 1].isascii() and text[b - 1].isalnum() and "!" <= text[b] <= "~" and not text[b].isalnum()
            assert newline or punct, repr(text[b - 5:b + 5])
            assert not -1 < text.find("<|endoftext|>", b - 12, b + 12) < b
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert "".join(pieces) == text
        whole = tok.encode(text)
        assert [i for p in tok.encode_batch(pieces) for i in p] == whole
    # The rule is not vacuous: a cut after a whitespace run ("\n\n|d") does change the ids, and so does
    # one inside "<|endoftext|>" (between a letter and punctuation, the second kind, but guarded).
    for left, right in (("def f():\n    pass\n\n", "def g(): pass\n"), ("a = '<|endoftext", "|>'\n")):
        assert tok.encode(left) + tok.encode(right) != tok.encode(left + right), (left, right)
        assert pack_mod.cut_points(left + right, len(left) - 1, guard) != [len(left)]


def test_only_a_known_pipeline_is_cut(tokenizer_dir):
    from tokenizers import normalizers, pre_tokenizers

    tok = load_tokenizer(tokenizer_dir)
    assert pack_mod.cut_guard(tok) is not None
    tok.backend.normalizer = normalizers.NFKC()
    assert pack_mod.cut_guard(tok) is None
    tok = load_tokenizer(tokenizer_dir)
    tok.backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert pack_mod.cut_guard(tok) is None
    tok.backend.pre_tokenizer = pre_tokenizers.Metaspace()
    assert pack_mod.cut_guard(tok) is None
    # With no guard, nothing is cut: a long document is one piece, encoded whole, as before.
    chunks = list(pack_mod._chunks(iter([("a\nb" * 5000, 15000)]), 1000, 0.0, None))
    assert [c[0] for c in chunks] == [["a\nb" * 5000]] and chunks[0][1] == [pack_mod.END]


def test_pack_ids_equal_encode_per_document(tmp_path, tokenizer_dir, stdlib_slice):
    """encode_batch_fast, cutting (small chunks) and the thread pipeline change no id: the stream is
    `encode(doc) + [EOS]` per document, in order, on both splits."""
    tok = load_tokenizer(tokenizer_dir)
    docs = [t for t in real_code(stdlib_slice, limit=700_000) if t] + [TRICKY * 30]  # pack skips empty ones
    inp = tmp_path / "docs.jsonl"
    inp.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
    m = pack_mod.pack(tokenizer_dir, [inp], tmp_path / "out", val_fraction=0.25, chunk_bytes=20_000)
    for split in ("train", "val"):
        mine = [d for d in docs if pack_mod.is_val(d, 0.25) == (split == "val")]
        assert m["splits"][split]["documents"] == len(mine) > 0
        assert stream(tmp_path / "out", split).tolist() == expected_stream(tok, mine)


def _huge_document(path, mb: float, stdlib_slice) -> list[str]:
    """One JSONL record of about `mb` MB of Python: real stdlib files, each numbered and stripped, so
    consecutive blocks meet at "x\\n|y" (a position the tokenizer splits at). Returns the blocks."""
    files = [t.strip() for t in real_code(stdlib_slice) if t.strip()]
    blocks, n, i = [], 0, 0
    while n < mb * 1e6:
        blocks.append(f"# block {i}\n{files[i % len(files)]}\n")
        n += len(blocks[-1])
        i += 1
    with open(path, "w") as fh:
        fh.write(json.dumps({"id": "huge", "text": "".join(blocks)}) + "\n")
    return blocks


def test_one_huge_document_keeps_memory_flat(tmp_path, tokenizer_dir, stdlib_slice, monkeypatch):
    """A single 12 MB document: the code before cutting held all of it at once in the tokenizer (1.85 GB peak RSS;
    9.4 GB at 50 MB). Cut into ~1 MB pieces the peak stays well under 1 GB, and the ids are exact."""
    inp = tmp_path / "huge.jsonl"
    blocks = _huge_document(inp, 12, stdlib_slice)
    out = tmp_path / "out"
    # The child's own high-water mark: VmHWM belongs to its post-exec address space, while ru_maxrss
    # (getrusage, wait4, /usr/bin/time) also counts the parent's RSS at the time of the fork.
    script = textwrap.dedent(f"""
        import resource
        from phi1.data.pack import pack
        m = pack({str(tokenizer_dir)!r}, [{str(inp)!r}], {str(out)!r})
        try:
            kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        except OSError:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(m["splits"]["train"]["documents"], m["splits"]["train"]["tokens"], kb)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}  # both cores, as by default
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    docs, tokens, maxrss_kb = map(int, r.stdout.split())
    assert docs == 1
    assert maxrss_kb < 1024 * 1024, f"peak RSS {maxrss_kb / 1024:.0f} MB packing one 12 MB document"
    tok = load_tokenizer(tokenizer_dir)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the reference on both cores too
    ref = [i for e in tok.backend.encode_batch_fast(blocks, add_special_tokens=False) for i in e.ids] + [tok.eos_id]
    assert tokens == len(ref)
    assert np.array_equal(stream(out), np.asarray(ref, dtype=np.uint16))


# ---- shard directories -----------------------------------------------------------------------------


def _write_gz(path, recs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in recs)


def test_stage_directory_packs_like_the_concatenated_jsonl(tmp_path, tokenizer_dir, stdlib_slice):
    texts = real_code(stdlib_slice[1:2], limit=300_000)
    recs = [{"id": f"r{i}", "text": t, "meta": {}} for i, t in enumerate(texts)]
    half = len(recs) // 2
    stage = tmp_path / "work" / "filter"
    # The manifest's order is the reading order (here not the file names' order); rejected/ is never read.
    _write_gz(stage / "data" / "00001.jsonl.gz", recs[:half])
    _write_gz(stage / "data" / "00000.jsonl.gz", recs[half:])
    _write_gz(stage / "rejected" / "00000.jsonl.gz", [{"id": "bad", "text": "REJECTED = True\n", "meta": {}}])
    (stage / "stage.json").write_text("{}")
    manifest = {"stage": "filter", "shards": [{"path": "data/00001.jsonl.gz", "records": half},
                                              {"path": "data/00000.jsonl.gz", "records": len(recs) - half}]}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    plain = tmp_path / "all.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in recs))

    a = pack_mod.pack(tokenizer_dir, [stage], tmp_path / "a", val_fraction=0.2, chunk_bytes=16_384)
    b = pack_mod.pack(tokenizer_dir, [plain], tmp_path / "b", val_fraction=0.2)
    for split in ("train", "val"):
        assert a["splits"][split]["documents"] == b["splits"][split]["documents"]
        assert np.array_equal(stream(tmp_path / "a", split), stream(tmp_path / "b", split))
    assert a["input_files"] == 2 and a["splits"]["val"]["documents"] > 0
    tok = load_tokenizer(tokenizer_dir)
    assert "REJECTED" not in tok.decode(stream(tmp_path / "a").tolist())
    # A plain directory of shards (no manifest) is read too, sorted by name, .jsonl and .jsonl.gz alike.
    loose = tmp_path / "loose"
    _write_gz(loose / "part-0.jsonl.gz", recs[:half])
    (loose / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[half:]))
    c = pack_mod.pack(tokenizer_dir, [loose], tmp_path / "c", val_fraction=0.2, workers=2)
    for split in ("train", "val"):
        assert c["splits"][split]["documents"] == b["splits"][split]["documents"]
        assert np.array_equal(stream(tmp_path / "c", split), stream(tmp_path / "b", split))


def test_bad_shard_directories_fail_with_one_clear_error(tmp_path, tokenizer_dir):
    recs = [{"id": str(i), "text": f"def f{i}():\n    return {i}\n"} for i in range(200)]
    stage = tmp_path / "stage"
    _write_gz(stage / "data" / "00000.jsonl.gz", recs)
    (stage / "stage.json").write_text("{}")
    with pytest.raises(Phi1Error, match="no manifest.json"):  # unfinished: a glob would take rejected/ too
        pack_mod.pack(tokenizer_dir, [stage], tmp_path / "o")
    (stage / "manifest.json").write_text(json.dumps({"shards": [{"path": "data/00000.jsonl.gz"},
                                                                {"path": "data/00001.jsonl.gz"}]}))
    with pytest.raises(Phi1Error, match="00001.jsonl.gz, which is missing"):
        pack_mod.pack(tokenizer_dir, [stage], tmp_path / "o")
    raw = (stage / "data" / "00000.jsonl.gz").read_bytes()
    (stage / "data" / "00001.jsonl.gz").write_bytes(raw[: len(raw) // 2])  # a torn shard
    with pytest.raises(Phi1Error, match="damaged or truncated gzip"):
        pack_mod.pack(tokenizer_dir, [stage], tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists()
    env = {**os.environ, "PHI1_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "pack", "--tokenizer", str(tokenizer_dir),
                        "--input", str(stage), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "00001.jsonl.gz: damaged or truncated gzip" in lines[0], r.stderr
    (stage / "data" / "00001.jsonl.gz").write_bytes(raw)
    r = subprocess.run([sys.executable, "-m", "phi1", "data", "pack", "--tokenizer", str(tokenizer_dir),
                        "--input", str(stage), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "train 400 docs" in r.stdout, r.stderr


# ---- threads ---------------------------------------------------------------------------------------


def test_worker_processes_share_the_cores(tokenizer_dir):
    """A worker of `--workers N` runs cores/N tokenizer threads; with one, it encodes in its own thread."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc to count threads")
    script = textwrap.dedent(f"""
        import os, sys
        from phi1.data import pack
        pack._init_worker({str(tokenizer_dir)!r}, int(sys.argv[1]))
        pack._encode_ids(pack._TOK, ["def f(x):\\n    return x\\n" * 200] * 64)
        print(len(os.listdir("/proc/self/task")))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    counts = {}
    for threads in (1, 2):
        r = subprocess.run([sys.executable, "-c", script, str(threads)], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        counts[threads] = int(r.stdout)
    assert counts[2] - counts[1] == 2  # two Rust pool threads; none with one
