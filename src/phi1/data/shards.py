"""Token shard files and their manifest.

A shard is a flat array of token ids behind a fixed 64-byte header:

    offset  size  field
    0       8     magic  b"PHI1TOK\\0"
    8       4     version (uint32, little endian) = 1
    12      4     itemsize (uint32): 2 -> uint16 ids, 4 -> uint32 ids
    16      8     count (uint64): number of tokens that follow
    24      40    reserved (zeros)

Documents are separated by the EOS id. A directory of shards is described by
`manifest.json`, written last: a shard that the manifest does not name is never
read, so a pack interrupted half way leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phi1.errors import Phi1Error
from phi1.utils.io import read_json
from phi1.utils.io import temp_prefix
from phi1.utils.safety import describe_oserror

MAGIC = b"PHI1TOK\0"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "phi1-token-shards"
DTYPES = {2: np.uint16, 4: np.uint32}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def encode_header(itemsize: int, count: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, itemsize, count).ljust(HEADER_BYTES, b"\0")


def read_header(path: Path) -> tuple[np.dtype, int]:
    """(dtype, count) of a shard; raises Phi1Error when the file is not a complete shard."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_BYTES)
    except OSError as exc:
        raise Phi1Error(f"{path}: cannot read shard ({exc.strerror})") from None
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise Phi1Error(f"{path}: not a phi1 token shard (bad magic); re-run `phi1 data pack`")
    _, version, itemsize, count = _HEADER.unpack(raw[: _HEADER.size])
    if version != VERSION:
        raise Phi1Error(f"{path}: shard format version {version}, this phi1 reads {VERSION}; re-pack the data")
    if itemsize not in DTYPES:
        raise Phi1Error(f"{path}: unsupported token size {itemsize} bytes")
    expected = HEADER_BYTES + count * itemsize
    size = path.stat().st_size
    if size != expected:
        raise Phi1Error(f"{path}: truncated or padded shard ({size} bytes, header says {expected}); re-pack the data")
    return np.dtype(DTYPES[itemsize]), count


def open_shard(path: Path) -> np.ndarray:
    """The shard's tokens as a read-only memory map (no copy)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


class ShardWriter:
    """Streams tokens into a temp file beside `path`, then patches the header and renames on close.

    Memory stays flat: arrays are written as they arrive. Until `close()` the
    final name does not exist, so an interrupted write is never mistaken for a shard.
    The temp file is `.NAME.phi1-PID-RANDOM.tmp` (see `phi1.utils.safety`): a later run
    removes it once its writer is dead. A failed write (a full disk) removes it at once and
    raises a Phi1Error naming the shard.
    """

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.path.name), suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise Phi1Error(f"{self.path}: cannot create the shard: {describe_oserror(exc)}") from None
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "wb")
        self.count = 0
        self.documents = 0
        self._guard(lambda: self.fh.write(encode_header(self.dtype.itemsize, 0)))

    def _guard(self, op):
        try:
            return op()
        except OSError as exc:
            self.abort()
            raise Phi1Error(f"{self.path}: cannot write the shard: {describe_oserror(exc)}") from None

    def write(self, ids: np.ndarray, documents: int = 0) -> None:
        self._guard(lambda: self.fh.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes()))
        self.count += len(ids)
        self.documents += documents

    def close(self) -> dict:
        def finish():
            self.fh.seek(0)
            self.fh.write(encode_header(self.dtype.itemsize, self.count))
            self.fh.flush()
            os.fchmod(self.fh.fileno(), 0o644)
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)

        self._guard(finish)
        return {"file": self.path.name, "tokens": self.count, "documents": self.documents}

    def abort(self) -> None:
        if not self.fh.closed:
            try:
                self.fh.close()
            except OSError:
                pass  # a full disk fails the final flush too; the file goes either way
        self.tmp.unlink(missing_ok=True)


def write_shard(path: Path, ids: np.ndarray, documents: int = 0) -> dict:
    """Write one whole shard atomically."""
    w = ShardWriter(path, ids.dtype)
    try:
        w.write(ids, documents)
        return w.close()
    except BaseException:
        w.abort()
        raise


@dataclass
class ShardSet:
    """The shards of one split of a packed directory, opened as memory maps."""

    root: Path
    split: str
    arrays: list[np.ndarray]
    manifest: dict

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.arrays)

    @property
    def fingerprint(self) -> str | None:
        return (self.manifest.get("tokenizer") or {}).get("fingerprint")


def read_manifest(root: str | os.PathLike) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise Phi1Error(f"{root}: shard directory not found; create it with `phi1 data pack`")
    if not path.exists():
        raise Phi1Error(f"{path}: missing; {root} is not a finished pack (re-run `phi1 data pack`)")
    m = read_json(path, "shard manifest")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise Phi1Error(f"{path}: not a phi1 token-shard manifest (format != {MANIFEST_FORMAT!r})")
    return m


def open_split(root: str | os.PathLike, split: str) -> ShardSet:
    """Open the shards the manifest lists for `split` ('train' or 'val'); verify each header."""
    root = Path(root)
    m = read_manifest(root)
    entry = (m.get("splits") or {}).get(split) or {"shards": []}
    arrays = []
    for sh in entry["shards"]:
        f = root / sh["file"]
        if not f.exists():
            raise Phi1Error(f"{f}: listed in {root / MANIFEST} but missing; re-run `phi1 data pack`")
        arr = open_shard(f)
        if len(arr) != sh["tokens"]:
            raise Phi1Error(f"{f}: holds {len(arr)} tokens but the manifest says {sh['tokens']}; re-pack")
        arrays.append(arr)
    return ShardSet(root, split, arrays, m)
