"""`phi1 data pack`: tokenize documents and write token shards + a manifest.

Documents come from JSONL files (`text`, optional `id`; `.jsonl` or `.jsonl.gz`), plain text files,
directories of `.py`, `.jsonl` and `.jsonl.gz` files, and stage directories written by `phi1 data run`
(the `data/` shards their `manifest.json` lists, in that order). They are read as a stream, grouped into
chunks of about `chunk_bytes`, tokenized, and appended to the current train or val shard as results
come back in order.

Tokenizing: by default one process encodes each chunk with the tokenizer library's own thread pool
(`encode_batch_fast`: the ids of `encode`, without offsets), one Rust thread per core, while Python
reads the next chunk and turns the last one's ids into an array. `workers=N` starts N processes
instead, each with cores/N Rust threads, so busy threads never outnumber cores. At most two chunks
(2 x workers with processes) are in flight, and a document longer than a chunk is encoded in pieces
cut where the tokenizer splits anyway (`cut_points`, same ids), so memory stays flat however large the
input or a single document is.

Each document goes to val when a hash of its text falls below `val_fraction`:
the split is a pure function of the content, stable across reruns, worker
counts and input order, and exact duplicates always land on the same side.

The output directory is phi1's own (`.phi1-output.json`, owner "data pack"): a new or empty
directory, or one an earlier pack wrote; anything else needs `overwrite`, and even then only
files named by a previous manifest of ours are ever deleted. A repack writes a new
generation of shards (`train-<GEN>-00000.bin`) beside the old pack, which stays loadable
until the new `manifest.json` replaces the old one atomically (the commit point); only
then are the old generation's files removed. A pack killed part way leaves the old pack
whole; the next pack removes the abandoned generation (named in `.pack-pending.json`).
One pack writes a directory at a time (`OutputLock`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from phi1.utils.io import atomic_write_json, json_loads
from phi1.utils.procs import guarded_initializer
from phi1.data.shardfiles import expand_record_inputs, open_record_lines
from phi1.data.shards import MANIFEST, MANIFEST_FORMAT, ShardWriter, dtype_for_vocab
from phi1.errors import Phi1Error
from phi1.utils.cliio import declare_io
from phi1.utils.progress import progress
from phi1.utils.safety import OutputLock, claim_output_dir, describe_oserror, refuse_overlap, remove_own_files

SPLITS = ("train", "val")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz")


def is_val(text: str, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of blake2b(text) as a fraction of 2^64."""
    if val_fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2.0**64 < val_fraction


def _is_records(f: Path) -> bool:
    return f.name.endswith(RECORD_SUFFIXES)


def _stage_manifest(d: Path) -> bool:
    """Whether `d` is a finished stage of `phi1 data run` (a manifest.json with a `shards` list)."""
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and isinstance(m.get("shards"), list)


def _input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise Phi1Error(f"--input {p}: not found")
        if not p.is_dir():
            files.append(p)
        elif _stage_manifest(p) or (p / "stage.json").is_file():
            shards = expand_record_inputs([p])  # the kept shards, in the manifest's order; unfinished: refused
            other = next((f for f in shards if not _is_records(f)), None)
            if other is not None:
                raise Phi1Error(f"--input {p}: its manifest lists {other.name}; pack reads .jsonl and .jsonl.gz shards")
            files.extend(shards)
        else:
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix == ".py" or _is_records(f))))
    return files


SKIP_HINT = "pass --skip-bad-lines to skip and count such lines"


def iter_documents(files: list[Path], stats: dict, skip_bad_lines: bool = False) -> Iterator[tuple[str, int]]:
    """(text, input bytes consumed) per document.

    A JSONL line that is not UTF-8 or not JSON (or a text file that is not UTF-8) is fatal,
    naming file:line, unless `skip_bad_lines`: then it is counted (`bad_utf8`, `bad_json`)
    and skipped. Records without a string `text` are counted as `no_text` and skipped.
    A `.jsonl.gz` file is read as a stream; its bytes (on disk) are counted when it ends.
    """
    from phi1.data.records import decode_line

    def bad(kind: str, where: str, why: str) -> None:
        if not skip_bad_lines:
            raise Phi1Error(f"{where}: {why}; fix it or {SKIP_HINT}")
        stats[kind] += 1
        stats["skipped"] += 1

    for f in files:
        if _is_records(f):
            gz = f.name.endswith(".gz")
            for lineno, line in enumerate(open_record_lines(f), 1):
                n = 0 if gz else len(line)
                if not line.strip():
                    yield "", n
                    continue
                decoded, why = decode_line(line)
                del line
                if decoded is None:
                    bad("bad_utf8", f"{f}:{lineno}", why)
                    yield "", n
                    continue
                try:
                    rec = json_loads(decoded)
                except json.JSONDecodeError as exc:
                    bad("bad_json", f"{f}:{lineno}", f"malformed JSONL line ({exc.msg})")
                    yield "", n
                    continue
                del decoded  # a 50 MB line is held once (as `text`), not three times
                text = rec.get("text") if isinstance(rec, dict) else None
                del rec
                if not isinstance(text, str):
                    stats["no_text"] += 1
                    stats["skipped"] += 1
                    yield "", n
                    continue
                yield text, n
                del text
            if gz:
                yield "", f.stat().st_size
        else:
            raw = f.read_bytes()
            decoded, why = decode_line(raw, "offset")
            if decoded is None:
                bad("bad_utf8", str(f), why)
                yield "", len(raw)
                continue
            n = len(raw)
            del raw
            yield decoded, n
            del decoded


# ---- cutting long documents ---------------------------------------------------------------------
#
# A document longer than a chunk is encoded in pieces, and the pieces' ids are exactly the whole
# document's when no step of the tokenizer looks across a cut. That holds, by construction, for a
# byte-level BPE with no normalizer and GPT-2's pre-tokenizer regex (ours, codegen's = phi-1's, GPT-2's)
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# at two kinds of position b (both sides are ASCII, so Python's and Oniguruma's \s, \p{L} agree):
#   1. "x\n|y": after a newline that follows a non-space character, before a non-space character. No
#      alternative matches "\n" with a non-space character after it, and the "\n" is one token either
#      way (`\s+` before "y" in the whole text, `\s+(?!\S)` at the end of a piece). Never after a longer
#      whitespace run: in "x \n|y" or "\n\n|y" the whole text gives " " + "\n", a piece ending there
#      gives " \n" (one pre-token), and the ids differ.
#   2. "f|(": between an ASCII letter or digit and ASCII punctuation. No alternative matches both a
#      letter/digit and punctuation, so a token ends at b either way.
# The regex has no look-behind, so the text after b tokenizes from b as it does in the whole text.
# Added tokens (the whitespace runs, <|endoftext|>) are matched before the regex: a cut never falls
# inside an occurrence of one, and tokens flagged lstrip/rstrip/single_word (they look at their
# neighbours) turn cutting off. A tokenizer with any other pipeline (a normalizer, Metaspace,
# add_prefix_space, another split regex) is never cut: its documents are encoded whole, as before,
# and memory then grows with the longest document. tests/test_pack_scale.py checks the rule on real
# code against whole-document encoding.

_NEWLINE_CUT = re.compile(r"(?<=[!-~]\n)(?=[!-~])")
_ANY_CUT = re.compile(r"(?<=[!-~]\n)(?=[!-~])|(?<=[A-Za-z0-9])(?=[!-/:-@\[-`{-~])")
_CUTTABLE_PRE = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def cut_guard(tok) -> tuple[str, ...] | None:
    """The added tokens a cut must not fall inside, or None when this tokenizer's documents are never cut."""
    try:
        spec = json.loads(tok.backend.to_str())
    except (AttributeError, ValueError, TypeError):
        return None
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None or any(pre.get(k) != v for k, v in _CUTTABLE_PRE.items()):
        return None
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added):
        return None
    # A cut has a printable ASCII character after it; a token without one (a whitespace run) cannot span it.
    return tuple(a["content"] for a in added if re.search(r"[!-~]", a.get("content") or ""))


def _spans_added(text: str, b: int, guard: tuple[str, ...]) -> bool:
    for c in guard:
        i = text.find(c, max(0, b - len(c) + 1), b + len(c) - 1)
        if -1 < i < b:
            return True
    return False


def cut_points(text: str, piece: int, guard: tuple[str, ...]) -> list[int]:
    """Where to cut `text` into pieces of at least `piece` characters (the rule above).

    Each cut is the first safe position at or after `piece` characters past the previous one, a
    newline one if there is one within piece/4, so pieces are about `piece` long in code. A stretch
    with no safe position (one long run of letters, say) stays in one piece.
    """
    cuts: list[int] = []
    start, n = 0, len(text)
    while n - start > piece:
        pos = start + piece
        m = _NEWLINE_CUT.search(text, pos, pos + piece // 4 + 2) or _ANY_CUT.search(text, pos)
        while m is not None and _spans_added(text, m.start(), guard):
            m = _ANY_CUT.search(text, m.start() + 1)
        if m is None:
            break
        start = m.start()
        cuts.append(start)
    return cuts


# ---- encoding -----------------------------------------------------------------------------------

VAL, END = 1, 2  # piece flags: the piece's document goes to val; the piece ends its document (EOS after it)

_TOK = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _init_worker(tokenizer_dir: str, threads: int | None = None) -> None:  # after procs.worker_guard in workers
    """Load the tokenizer; in a worker process, first cap the Rust thread pool at `threads`."""
    global _TOK
    if threads is not None:  # read by rayon when the pool starts, at this process's first batch
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        if threads == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # encode in this thread, no pool hand-off
    from phi1.tokenizer import load_tokenizer

    _TOK = load_tokenizer(tokenizer_dir)


def _encode_ids(tok, texts: list[str]) -> list[list[int]]:
    """Ids per text, bit-identical to `tok.encode`; `encode_batch_fast` skips the offsets (~2x faster)."""
    backend = tok.backend
    fast = getattr(backend, "encode_batch_fast", None)  # tokenizers >= 0.20
    if fast is None:
        return tok.encode_batch(texts)
    return [e.ids for e in fast(texts, add_special_tokens=False)]


def encode_chunk(texts: list[str], flags: list[int], dtype: str) -> dict:
    """Tokenize one chunk of pieces; EOS follows each document's last piece. Ids and documents per split."""
    tok = _TOK
    parts: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    docs = dict.fromkeys(SPLITS, 0)
    for ids, flag in zip(_encode_ids(tok, texts), flags):
        s = SPLITS[flag & VAL]
        if flag & END:
            ids.append(tok.eos_id)
            docs[s] += 1
        parts[s].append(ids)
    out = {}
    for s in SPLITS:
        n = sum(map(len, parts[s]))
        out[s] = (np.fromiter(itertools.chain.from_iterable(parts[s]), dtype=dtype, count=n), docs[s])
    return out


# ---- driver -----------------------------------------------------------------------------------


def _chunks(docs: Iterator[tuple[str, int]], chunk_bytes: int, val_fraction: float,
            guard: tuple[str, ...] | None) -> Iterator[tuple[list[str], list[int], int]]:
    """(piece texts, piece flags, input bytes) per chunk of about `chunk_bytes` characters.

    The split of a document is decided on its whole text, before it is cut into pieces.
    """
    texts: list[str] = []
    flags: list[int] = []
    nbytes = size = 0
    for text, n in docs:
        nbytes += n
        if not text:
            continue
        val = VAL if is_val(text, val_fraction) else 0
        cuts = cut_points(text, chunk_bytes, guard) if guard is not None and len(text) > chunk_bytes else []
        bounds = [0, *cuts, len(text)]
        for k in range(len(bounds) - 1):
            texts.append(text[bounds[k]:bounds[k + 1]] if cuts else text)
            flags.append(val | (END if k == len(cuts) else 0))
            size += bounds[k + 1] - bounds[k]
            if size >= chunk_bytes:
                yield texts, flags, nbytes
                texts, flags, nbytes, size = [], [], 0, 0
        del text
    if texts or nbytes:
        yield texts, flags, nbytes


class _SplitWriter:
    """Rolls over to a new shard file (`SPLIT-GEN-00000.bin`) every `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int, generation: str):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.generation = generation
        self.shards: list[dict] = []
        self.cur: ShardWriter | None = None

    def write(self, ids: np.ndarray, docs: int) -> None:
        if len(ids) == 0:
            return
        if self.cur is None:
            self.cur = ShardWriter(self.out / f"{self.split}-{self.generation}-{len(self.shards):05d}.bin", self.dtype)
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
        """Remove everything this writer wrote (the open temp file and the closed shards)."""
        if self.cur is not None:
            self.cur.abort()
            self.cur = None
        remove_own_files(self.out, [sh["file"] for sh in self.shards])
        self.shards = []


OWNER = "data pack"
PENDING = ".pack-pending.json"
_GEN_FILE = re.compile(r"^(train|val)-(?P<gen>[0-9a-z]+)-\d{5}\.bin$")


def _committed(out: Path) -> dict | None:
    """The manifest of the finished pack in `out`, or None."""
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT else None


def _manifest_files(m: dict | None) -> set[str]:
    files: set[str] = set()
    for entry in ((m or {}).get("splits") or {}).values():
        for sh in (entry or {}).get("shards") or []:
            if isinstance(sh, dict) and isinstance(sh.get("file"), str):
                files.add(sh["file"])
    return files


def _is_earlier_pack(out: Path) -> bool:
    """A directory holding only a pack phi1 wrote (before output markers existed): ours to redo."""
    m = _committed(out)
    if m is None:
        return False
    from phi1.utils.safety import DIR_LOCK, MARKER

    own = _manifest_files(m) | {MANIFEST, MARKER, DIR_LOCK, PENDING}
    return all(e in own or (e.startswith(".") and e.endswith(".tmp")) for e in os.listdir(out))


def _pending(out: Path) -> list[str]:
    try:
        gens = json.loads((out / PENDING).read_text()).get("generations", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [g for g in gens if isinstance(g, str) and re.fullmatch(r"[0-9a-z]+", g)]


def _set_pending(out: Path, gens: list[str]) -> None:
    if gens:
        atomic_write_json(out / PENDING, {"generations": gens})
    else:
        (out / PENDING).unlink(missing_ok=True)


def _remove_abandoned(out: Path, keep: set[str]) -> int:
    """Delete the shards of generations a killed pack recorded as pending (never a committed file)."""
    gens = set(_pending(out))
    if not gens:
        return 0
    names = [e for e in os.listdir(out) if (m := _GEN_FILE.match(e)) and m.group("gen") in gens and e not in keep]
    n = remove_own_files(out, names)
    _set_pending(out, [])
    return n


def pack(tokenizer_dir: str | os.PathLike, inputs: list[str | os.PathLike], out_dir: str | os.PathLike,
         workers: int | None = None, val_fraction: float = 0.0, shard_tokens: int = 1 << 28,
         chunk_bytes: int = 1 << 20, *, skip_bad_lines: bool = False, overwrite: bool = False) -> dict:
    """Tokenize `inputs` into shards under `out_dir`; returns the manifest (plus timing).

    See the module docstring for what may be in `out_dir` and how a repack replaces a pack.
    """
    from phi1.tokenizer import load_tokenizer

    if not 0.0 <= val_fraction < 1.0:
        raise Phi1Error(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if shard_tokens <= 0:
        raise Phi1Error(f"--shard-tokens {shard_tokens}: must be positive")
    workers = 1 if workers is None else workers  # one process; the tokenizer's own threads use every core
    if workers < 1:
        raise Phi1Error(f"--workers {workers}: must be at least 1")
    tok = load_tokenizer(tokenizer_dir)
    files = _input_files(inputs)
    if not files:
        raise Phi1Error(f"--input {' '.join(map(str, inputs))}: no .py, .jsonl or .jsonl.gz files found")
    out = Path(out_dir)
    refuse_overlap({"--input": [str(f) for f in files], "--tokenizer": str(tokenizer_dir)}, out_dirs={"--out": str(out)})
    if out.is_dir() and any(Path(os.path.realpath(f)).is_relative_to(os.path.realpath(out)) for f in files):
        raise Phi1Error(f"--out {out}: holds an input file; write the pack to a directory of its own")
    claim_output_dir(out, OWNER, overwrite=overwrite or (out.is_dir() and _is_earlier_pack(out)))
    with OutputLock(out, is_dir=True, what="pack directory"):
        return _pack_locked(tok, str(tokenizer_dir), inputs, files, out, workers, val_fraction, shard_tokens,
                            chunk_bytes, skip_bad_lines)


def _encode_here(tok, chunks, consume, dtype: str) -> None:
    """Encode in this process: two chunks in flight on two threads, so the Rust pool (which runs
    without the GIL) always has a batch while Python reads the next chunk and converts the last."""
    global _TOK
    _TOK = tok
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(2, thread_name_prefix="phi1-pack") as ex:
        try:
            for texts, flags, nbytes in chunks:
                pending.append((ex.submit(encode_chunk, texts, flags, dtype), nbytes))
                if len(pending) >= 2:
                    f, n = pending.popleft()
                    consume(f.result(), n)
            while pending:
                f, n = pending.popleft()
                consume(f.result(), n)
        finally:
            for f, _ in pending:
                f.cancel()


def _pack_locked(tok, tokenizer_dir: str, inputs, files: list[Path], out: Path, workers: int, val_fraction: float,
                 shard_tokens: int, chunk_bytes: int, skip_bad_lines: bool) -> dict:
    old = _committed(out)
    old_files = _manifest_files(old)
    _remove_abandoned(out, keep=old_files)
    generation = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
    _set_pending(out, [generation])  # before any shard of it exists: a kill leaves it provably ours
    dtype = dtype_for_vocab(len(tok))
    total_bytes = sum(f.stat().st_size for f in files)
    stats = collections.Counter()
    writers = {s: _SplitWriter(out, s, dtype, shard_tokens, generation) for s in SPLITS}
    t0 = time.perf_counter()
    bar = progress(total=total_bytes, desc="pack", unit="B", unit_scale=True)
    chunks = _chunks(iter_documents(files, stats, skip_bad_lines), chunk_bytes, val_fraction, cut_guard(tok))

    def consume(result: dict, nbytes: int) -> None:
        for s in SPLITS:
            ids, docs = result[s]
            writers[s].write(ids, docs)
            stats[f"{s}_docs"] += docs
            stats[f"{s}_tokens"] += len(ids)
        bar.update(nbytes)

    try:
        if workers == 1:
            _encode_here(tok, chunks, consume, dtype.name)
        else:
            ctx = mp.get_context("spawn")  # fork after the Rust tokenizer ran can deadlock its threads
            threads = max(1, _cores() // workers)  # workers x threads == cores: no oversubscription
            init, initargs = guarded_initializer(_init_worker, (tokenizer_dir, threads))
            with ctx.Pool(workers, initializer=init, initargs=initargs) as pool:
                pending: collections.deque = collections.deque()
                for texts, flags, nbytes in chunks:
                    pending.append((pool.apply_async(encode_chunk, (texts, flags, dtype.name)), nbytes))
                    if len(pending) >= 2 * workers:  # bounded in-flight work keeps memory flat
                        r, n = pending.popleft()
                        consume(r.get(), n)
                while pending:
                    r, n = pending.popleft()
                    consume(r.get(), n)
        shards = {s: writers[s].close() for s in SPLITS}
        if stats["train_tokens"] == 0:
            raise Phi1Error(f"--input {' '.join(map(str, inputs))}: no documents with text; nothing to train on")
        elapsed = time.perf_counter() - t0
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "generation": generation,
            "tokenizer": {"path": str(tokenizer_dir), "fingerprint": tok.fingerprint(), "vocab_size": len(tok),
                          "eos_id": tok.eos_id},
            "dtype": dtype.name,
            "inputs": [str(p) for p in inputs],
            "input_files": len(files),
            "input_bytes": total_bytes,
            "val_fraction": val_fraction,
            "skipped_records": stats["skipped"],
            "bad_lines": {"bad_utf8": stats["bad_utf8"], "bad_json": stats["bad_json"], "no_text": stats["no_text"]},
            "splits": {s: {"documents": stats[f"{s}_docs"], "tokens": stats[f"{s}_tokens"], "shards": shards[s]}
                       for s in SPLITS},
        }
        try:
            atomic_write_json(out / MANIFEST, manifest)  # the commit point: the new pack replaces the old at once
        except OSError as exc:
            raise Phi1Error(f"{out / MANIFEST}: cannot write the manifest: {describe_oserror(exc)}") from None
    except BaseException:
        for w in writers.values():
            w.abort()
        _set_pending(out, [])
        raise
    finally:
        bar.close()
    # Only now the old generation is garbage: delete exactly the files its manifest listed.
    remove_own_files(out, old_files - _manifest_files(manifest))
    _set_pending(out, [])
    return {**manifest, "seconds": elapsed, "mb_per_s": total_bytes / 1e6 / max(elapsed, 1e-9)}


def register_data(sub) -> None:
    p = sub.add_parser("pack", help="tokenize documents into token shards for training",
                       description="Tokenize JSONL `text` fields (.jsonl, .jsonl.gz, stage directories), "
                                   "text files and directories of .py files into uint16/uint32 token shards "
                                   "with a manifest.")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or a model directory)")
    p.add_argument("--input", nargs="+", required=True,
                   help="JSONL (.jsonl, .jsonl.gz) and text files, directories of them, stage directories")
    p.add_argument("--out", required=True, help="output directory for shards + manifest.json")
    declare_io(p, inputs=("tokenizer", "input"), out_dirs=("out",), overwrite=True)
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default 1: one process whose tokenizer threads use all cores)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out for val")
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip (and count in the manifest) JSONL lines that are not UTF-8 or not JSON, instead of failing")

    def run(args) -> int:
        r = pack(args.tokenizer, args.input, args.out, workers=args.workers, val_fraction=args.val_fraction,
                 shard_tokens=args.shard_tokens, skip_bad_lines=args.skip_bad_lines,
                 overwrite=getattr(args, "overwrite", False))
        sp = r["splits"]
        print(f"packed {r['input_bytes'] / 1e6:.1f} MB in {r['seconds']:.1f}s ({r['mb_per_s']:.2f} MB/s): "
              f"train {sp['train']['documents']} docs / {sp['train']['tokens']} tokens, "
              f"val {sp['val']['documents']} docs / {sp['val']['tokens']} tokens -> {args.out}")
        bad = r["bad_lines"]
        if bad["bad_utf8"] or bad["bad_json"]:
            print(f"skipped {bad['bad_utf8']} lines that were not UTF-8 and {bad['bad_json']} malformed JSON lines "
                  f"(counted in {args.out}/manifest.json)", file=sys.stderr)
        return 0

    p.set_defaults(func=run)
