"""Corpora of any size as a stream of token windows, in bounded memory.

A corpus is a UTF-8 text file (one document) or a JSONL file of records with a "text" field
(one document each, separated by the tokenizer's EOS token). Text is read in chunks and cut
only where byte-level BPE pre-tokenization splits anyway, so the streamed tokens equal those
of tokenizing the whole document at once (see `safe_cut`).
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from phi1.errors import Phi1Error
from phi1.utils.io import read_jsonl

CHUNK_BYTES = 1 << 18          # bytes read per step
PIECE_CHARS = 1 << 16          # text tokenized per call (its encoding is the transient peak)
HARD_CUT_CHARS = 1 << 22       # a piece with no safe cut point this long is cut anyway

# A newline between two non-blank characters, or a single space between two non-blank
# characters: GPT-2-style pre-tokenizers (ours, CodeGen's) always split there, so cutting
# there and tokenizing the two sides apart gives the same tokens as tokenizing them together.
_AFTER_NEWLINE = re.compile(r"(?<=\S\n)(?=\S)")
_BEFORE_SPACE = re.compile(r"(?<=\S)(?= \S)")


def safe_cut(text: str, limit: int | None = None) -> int:
    """The last index <= `limit` where `text` may be cut without changing its tokenization (0: none)."""
    limit = len(text) if limit is None else min(limit, len(text))
    # The 64K characters before the limit are searched first: pieces stay close to `limit` long.
    for lo in dict.fromkeys((max(0, limit - 65536), 0)):
        window = text[lo:limit + 1]  # one character past the limit, for the lookahead
        for rx in (_AFTER_NEWLINE, _BEFORE_SPACE):
            last = 0
            for m in rx.finditer(window):
                if m.start() <= limit - lo:
                    last = m.start()
            if last:
                return lo + last
    return 0


def _first_cut(text: str) -> int:
    """The first safe cut point after the start (0: none), for text with none before the limit."""
    found = [m.start() for rx in (_AFTER_NEWLINE, _BEFORE_SPACE) for m in [rx.search(text, 1)] if m]
    return min(found, default=0)


def _pieces(chunks: Iterable[str], piece_chars: int) -> Iterator[str]:
    """Re-cut a stream of text chunks (one document) at safe points, about `piece_chars` long."""
    buf = ""
    for chunk in chunks:
        buf += chunk
        while len(buf) > piece_chars:
            cut = safe_cut(buf, piece_chars) or _first_cut(buf)
            if not cut:
                if len(buf) < HARD_CUT_CHARS:
                    break
                cut = len(buf)  # no safe point in 4M characters: one token may differ here
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


def check_text_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail early on a missing path, a directory, or a file whose first bytes are not UTF-8 text."""
    p = Path(path)
    if not p.exists():
        raise Phi1Error(f"{flag} {p}: file not found")
    if p.is_dir():
        raise Phi1Error(f"{flag} {p}: is a directory; give a text file (or a JSONL file of records with \"text\")")
    with p.open("rb") as fh:
        head = fh.read(1 << 16)
    for _ in _text_chunks_of([head], p, flag, final=False):
        pass
    return p


def _text_chunks_of(raws, path: Path, flag: str, final: bool = True) -> Iterator[str]:
    dec = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    for raw in raws:
        nul = raw.find(b"\0")
        if nul != -1:
            raise Phi1Error(f"{flag} {path}: not a text file (NUL byte at offset {offset + nul}); "
                            "give UTF-8 text or a JSONL file")
        pending = len(dec.getstate()[0])  # bytes of a character cut by the previous block
        try:
            text = dec.decode(raw, final=final and not raw)
        except UnicodeDecodeError as exc:
            at = offset - pending + exc.start
            raise Phi1Error(f"{flag} {path}: not UTF-8 text (invalid byte at offset {at}); "
                            "convert it to UTF-8") from None
        offset += len(raw)
        if text:
            yield text


def _read_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while True:
            raw = fh.read(CHUNK_BYTES)
            yield raw  # the last, empty block makes the decoder check for a cut-off character
            if not raw:
                return


def _text_chunks(path: Path, flag: str) -> Iterator[str]:
    return _text_chunks_of(_read_blocks(path), path, flag)


def documents(path: str | os.PathLike, flag: str = "--corpus") -> Iterator[Iterator[str]]:
    """Each document of the corpus file as an iterator of its text chunks."""
    p = check_text_file(path, flag)
    if p.name.endswith(".jsonl"):
        for i, rec in enumerate(read_jsonl(p)):
            text = rec.get("text")
            if not isinstance(text, str):
                raise Phi1Error(f"{flag} {p}: record {i + 1} has no \"text\" string")
            yield iter((text,))
    else:
        yield _text_chunks(p, flag)


def token_stream(docs: Iterable[Iterable[str]], tokenizer, piece_chars: int | None = None) -> Iterator[list[int]]:
    """Token ids of each document in pieces; consecutive documents are separated by EOS."""
    first = True
    for doc in docs:
        if not first and tokenizer.eos_id is not None:
            yield [tokenizer.eos_id]
        first = False
        for piece in _pieces(doc, piece_chars or PIECE_CHARS):
            ids = tokenizer.encode(piece)
            if ids:
                yield ids


def windows(stream: Iterable[list[int]], seq_len: int, max_tokens: int | None = None) -> Iterator[list[int]]:
    """Consecutive non-overlapping windows of `seq_len` tokens (the last may be shorter)."""
    buf: list[int] = []
    seen = 0
    for ids in stream:
        if max_tokens is not None:
            ids = ids[: max(0, max_tokens - seen)]
        seen += len(ids)
        buf.extend(ids)
        while len(buf) >= seq_len:
            yield buf[:seq_len]
            del buf[:seq_len]
        if max_tokens is not None and seen >= max_tokens:
            break
    if buf:
        yield buf


def batches(wins: Iterable[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    """Windows grouped by `batch_size`; a shorter (last) window is a batch of its own."""
    batch: list[list[int]] = []
    for w in wins:
        if batch and len(w) != len(batch[0]):
            yield batch
            batch = []
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def text_documents(texts: Iterable[str]) -> Iterator[Iterator[str]]:
    """In-memory texts as documents (for callers that already hold them)."""
    for t in texts:
        yield iter((t,))
