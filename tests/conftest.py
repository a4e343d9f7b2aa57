"""Shared fixtures: a real tokenizer trained on stdlib code and tiny random phi models."""

from __future__ import annotations

import os
import sysconfig
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PHI1_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Embedding caches of the tests go to a fresh folder, never to the user's ~/.cache/phi1.
os.environ.setdefault("PHI1_CACHE_DIR", tempfile.mkdtemp(prefix="phi1-test-cache-"))

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def stdlib_slice() -> list[Path]:
    """A few real stdlib packages: code nobody on the team wrote."""
    return [STDLIB / "json", STDLIB / "email", STDLIB / "collections"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, stdlib_slice) -> Path:
    from phi1.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(stdlib_slice, vocab_size=1024, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random phi model (HF format, 'micro' preset, vocab 1024) with its tokenizer."""
    from phi1.model.create import init_model_dir

    out = tmp_path_factory.mktemp("models") / "tiny"
    init_model_dir("micro", tokenizer_dir, out, seed=0, max_position_embeddings=512)
    return out


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    """(model, tokenizer) of the tiny model, loaded in-process on CPU in float32."""
    from phi1.model import load_for_inference

    return load_for_inference(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one intra-op thread avoids oversubscription stalls. A module that trains asks for
    it once: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
