"""Running an exported file in llama.cpp (through llama-cpp-python): tokens, greedy decoding, loss.

The export's own check (a held-out text's loss in phi1 and in llama.cpp), the tests' oracle and
`bench/decode.py --backend llama.cpp` all go through these few calls.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from phi1.errors import Phi1Error, require_package


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def captured_stderr():
    """Collect what C code writes to fd 2 (llama.cpp logs some lines even when told to be quiet);
    yields a list that holds the captured lines afterwards."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines += log.read().decode(errors="replace").splitlines()


def open_gguf(path: str | os.PathLike, n_ctx: int = 512, *, logits_all: bool = True, n_threads: int | None = None):
    """A llama_cpp.Llama on CPU for a GGUF file (quiet)."""
    Llama = require_package("llama_cpp", "running a GGUF file in llama.cpp (it builds llama.cpp at install, "
                              "several minutes on a CPU)").Llama
    with captured_stderr() as log:
        try:
            return Llama(model_path=str(Path(path)), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all,
                         n_gpu_layers=0, n_threads=n_threads or min(4, os.cpu_count() or 1), verbose=False, seed=0)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            err = exc
    why = next((x for x in reversed(log) if "error" in x.lower()), str(err))
    raise Phi1Error(f"{path}: llama.cpp cannot load it: {why.strip()}")


def tokenize(llm, text: str) -> list[int]:
    """llama.cpp's tokenization of text, no BOS. Special-token text (`<|endoftext|>`) is parsed as the
    token, as a `tokenizers` tokenizer (ours) always does."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def logits(llm, ids: list[int]) -> np.ndarray:
    """Logits (T, V) for every position of `ids`, from a fresh context."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt` (argmax of llama.cpp's logits; EOS does not stop it)."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def mean_nll(lg: np.ndarray, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of ids[1:] under logits lg (T, V)."""
    lg = lg[:-1].astype(np.float64)
    m = lg.max(-1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(lg - m).sum(-1))
    tgt = np.asarray(ids[1:])
    return float(np.mean(logz - lg[np.arange(len(tgt)), tgt]))


def phi1_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


def held_out_text() -> str:
    """phi1's own library problems (prompt + solution): code written for phi1, in no training corpus."""
    import json
    from importlib.resources import files

    lines = files("phi1.resources").joinpath("library_prompts.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines if x.strip()]
    return "\n\n".join(r["prompt"] + r["solution"] for r in recs)


def compare(model_dir: str | os.PathLike, gguf_path: str | os.PathLike, text: str, max_tokens: int = 512) -> dict:
    """phi1's fp32 model and llama.cpp's run of the file on the same tokens of `text`: loss, delta, top-1 agreement."""
    from phi1.model import load_for_inference

    model, tok = load_for_inference(model_dir, device="cpu", dtype="float32")
    n = min(max_tokens, model.config.max_position_embeddings)
    ids = tok.encode(text)[:n]
    if len(ids) < 2:
        raise Phi1Error("--eval-text: needs at least 2 tokens")
    ref = phi1_logits(model, ids)
    llm = open_gguf(gguf_path, n_ctx=len(ids))
    try:
        got = logits(llm, ids)
    finally:
        llm.close()
    ours, theirs = mean_nll(ref, ids), mean_nll(got, ids)
    return {"tokens": len(ids), "phi1_loss": ours, "llama_cpp_loss": theirs, "delta": theirs - ours,
            "top1_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1)))}
