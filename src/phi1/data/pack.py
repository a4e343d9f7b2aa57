"""`phi1 data pack`: tokenize documents in parallel and write token shards + a manifest.

Documents come from JSONL files (`text`, optional `id`), plain text files and
directories of `.py`/`.jsonl` files. They are read as a stream, grouped into
chunks of about `chunk_bytes`, tokenized by worker processes, and appended to
the current train or val shard as results come back in order. At most
2 x workers chunks are in flight, so memory stays flat however large the input.

Each document goes to val when a hash of its text falls below `val_fraction`:
the split is a pure function of the content, stable across reruns, worker
counts and input order, and exact duplicates always land on the same side.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from phi1.data.shards import MANIFEST, MANIFEST_FORMAT, ShardWriter, dtype_for_vocab
from phi1.errors import Phi1Error
from phi1.utils.cliio import declare_io
from phi1.utils.io import atomic_write_json
from phi1.utils.progress import progress

SPLITS = ("train", "val")


def is_val(text: str, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of blake2b(text) as a fraction of 2^64."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2.0**64 < val_fraction


def _input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise Phi1Error(f"--input {p}: not found")
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".py", ".jsonl")))
        else:
            files.append(p)
    return files


def iter_documents(files: list[Path], stats: dict) -> Iterator[tuple[str, int]]:
    """(text, input bytes consumed) per document; malformed JSONL lines are counted in stats."""
    for f in files:
        if f.suffix == ".jsonl":
            with f.open("rb") as fh:
                for line in fh:
                    n = len(line)
                    if not line.strip():
                        yield "", n
                        continue
                    try:
                        rec = json.loads(line)
                        text = rec.get("text") if isinstance(rec, dict) else None
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        text = None
                    if not isinstance(text, str):
                        stats["skipped"] += 1
                        yield "", n
                        continue
                    yield text, n
        else:
            raw = f.read_bytes()
            try:
                yield raw.decode("utf-8"), len(raw)
            except UnicodeDecodeError:
                stats["skipped"] += 1
                yield "", len(raw)


# ---- worker side -----------------------------------------------------------------------------

_TOK = None


def _init_worker(tokenizer_dir: str) -> None:
    global _TOK
    from phi1.tokenizer import load_tokenizer

    _TOK = load_tokenizer(tokenizer_dir)


def encode_chunk(texts: list[str], val_fraction: float, dtype: str) -> dict:
    """Tokenize one chunk; each document is followed by EOS. Returns ids per split and counts."""
    tok = _TOK
    parts: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    for text, ids in zip(texts, tok.encode_batch(texts)):
        ids.append(tok.eos_id)
        parts["val" if is_val(text, val_fraction) else "train"].append(ids)
    out = {}
    for s in SPLITS:
        flat = [i for ids in parts[s] for i in ids]
        out[s] = (np.asarray(flat, dtype=dtype), len(parts[s]))
    return out


# ---- driver -----------------------------------------------------------------------------------


def _chunks(docs: Iterator[tuple[str, int]], chunk_bytes: int) -> Iterator[tuple[list[str], int]]:
    texts, nbytes, size = [], 0, 0
    for text, n in docs:
        nbytes += n
        if text:
            texts.append(text)
            size += len(text)
        if size >= chunk_bytes:
            yield texts, nbytes
            texts, nbytes, size = [], 0, 0
    if texts or nbytes:
        yield texts, nbytes


class _SplitWriter:
    """Rolls over to a new shard file every `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.cur: ShardWriter | None = None

    def write(self, ids: np.ndarray, docs: int) -> None:
        if len(ids) == 0:
            return
        if self.cur is None:
            self.cur = ShardWriter(self.out / f"{self.split}-{len(self.shards):05d}.bin", self.dtype)
        # Documents are not split across shards' bookkeeping: a chunk lands whole in one shard.
        self.cur.write(ids, docs)
        if self.cur.count >= self.shard_tokens:
            self.shards.append(self.cur.close())
            self.cur = None

    def close(self) -> list[dict]:
        if self.cur is not None:
            self.shards.append(self.cur.close())
            self.cur = None
        return self.shards

    def abort(self) -> None:
        if self.cur is not None:
            self.cur.abort()


def pack(tokenizer_dir: str | os.PathLike, inputs: list[str | os.PathLike], out_dir: str | os.PathLike,
         workers: int | None = None, val_fraction: float = 0.0, shard_tokens: int = 1 << 28,
         chunk_bytes: int = 1 << 20) -> dict:
    """Tokenize `inputs` into shards under `out_dir`; returns the manifest (plus timing)."""
    from phi1.tokenizer import load_tokenizer

    if not 0.0 <= val_fraction < 1.0:
        raise Phi1Error(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if shard_tokens <= 0:
        raise Phi1Error(f"--shard-tokens {shard_tokens}: must be positive")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise Phi1Error(f"--workers {workers}: must be at least 1")
    tok = load_tokenizer(tokenizer_dir)
    files = _input_files(inputs)
    if not files:
        raise Phi1Error(f"--input {' '.join(map(str, inputs))}: no .py or .jsonl files found")
    dtype = dtype_for_vocab(len(tok))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # An old manifest would vouch for shards we are about to overwrite: drop it first.
    (out / MANIFEST).unlink(missing_ok=True)
    total_bytes = sum(f.stat().st_size for f in files)
    stats = collections.Counter()
    writers = {s: _SplitWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    t0 = time.perf_counter()
    bar = progress(total=total_bytes, desc="pack", unit="B", unit_scale=True)
    chunks = _chunks(iter_documents(files, stats), chunk_bytes)

    def consume(result: dict, nbytes: int) -> None:
        for s in SPLITS:
            ids, docs = result[s]
            writers[s].write(ids, docs)
            stats[f"{s}_docs"] += docs
            stats[f"{s}_tokens"] += len(ids)
        bar.update(nbytes)

    try:
        if workers == 1:
            _init_worker(str(tokenizer_dir))
            for texts, nbytes in chunks:
                consume(encode_chunk(texts, val_fraction, dtype.name), nbytes)
        else:
            ctx = mp.get_context("spawn")  # fork after the Rust tokenizer ran can deadlock its threads
            with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool:
                pending: collections.deque = collections.deque()
                for texts, nbytes in chunks:
                    pending.append((pool.apply_async(encode_chunk, (texts, val_fraction, dtype.name)), nbytes))
                    if len(pending) >= 2 * workers:  # bounded in-flight work keeps memory flat
                        r, n = pending.popleft()
                        consume(r.get(), n)
                while pending:
                    r, n = pending.popleft()
                    consume(r.get(), n)
        shards = {s: writers[s].close() for s in SPLITS}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    if stats["train_tokens"] == 0:
        raise Phi1Error(f"--input {' '.join(map(str, inputs))}: no documents with text; nothing to train on")
    keep = {sh["file"] for s in SPLITS for sh in shards[s]}
    for stale in out.glob("*.bin"):  # shards of an earlier, larger pack into the same directory
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "tokenizer": {"path": str(tokenizer_dir), "fingerprint": tok.fingerprint(), "vocab_size": len(tok),
                      "eos_id": tok.eos_id},
        "dtype": dtype.name,
        "inputs": [str(p) for p in inputs],
        "input_files": len(files),
        "input_bytes": total_bytes,
        "val_fraction": val_fraction,
        "skipped_records": stats["skipped"],
        "splits": {s: {"documents": stats[f"{s}_docs"], "tokens": stats[f"{s}_tokens"], "shards": shards[s]}
                   for s in SPLITS},
    }
    atomic_write_json(out / MANIFEST, manifest)  # last: only now is the pack complete
    return {**manifest, "seconds": elapsed, "mb_per_s": total_bytes / 1e6 / max(elapsed, 1e-9)}


def register_data(sub) -> None:
    p = sub.add_parser("pack", help="tokenize documents into token shards for training",
                       description="Tokenize JSONL `text` fields, text files and directories of .py files "
                                   "into uint16/uint32 token shards with a manifest.")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or a model directory)")
    p.add_argument("--input", nargs="+", required=True, help="JSONL files, text files, directories")
    p.add_argument("--out", required=True, help="output directory for shards + manifest.json")
    declare_io(p, inputs=("tokenizer", "input"), out_dirs=("out",), overwrite=True)
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out for val")
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file")

    def run(args) -> int:
        r = pack(args.tokenizer, args.input, args.out, workers=args.workers, val_fraction=args.val_fraction,
                 shard_tokens=args.shard_tokens)
        sp = r["splits"]
        print(f"packed {r['input_bytes'] / 1e6:.1f} MB in {r['seconds']:.1f}s ({r['mb_per_s']:.2f} MB/s): "
              f"train {sp['train']['documents']} docs / {sp['train']['tokens']} tokens, "
              f"val {sp['val']['documents']} docs / {sp['val']['tokens']} tokens -> {args.out}")
        return 0

    p.set_defaults(func=run)
