"""`phi1 export gguf`: a model directory as one GGUF file for llama.cpp, Ollama and LM Studio.

The file is written with the `gguf` package. Each model family's GGUF mapping is its own
(`phi1.model.<family>.gguf`: the llama.cpp architecture, what it refuses, tensor names, its
hyper-parameters): phi models map to llama.cpp's `phi2` architecture, phi-3 models to `phi3`.
Tensor names and shapes are those llama.cpp's loader asks for (src/llama-model.cpp).

Types: f32, f16, bf16, q8_0 and q4_0 are quantized here by `gguf.quants`; q4_k_m, which that
package cannot quantize, goes through llama.cpp's own quantizer (`llama-quantize` on PATH, else
the `llama_cpp` Python binding's `llama_model_quantize`). Norms and biases stay f32; a q4_0 file
keeps its output (LM head) matrix at q8_0, the way llama.cpp's quantizer keeps it above 4 bits.
The file appears only when complete: it is written to a temp file beside it and renamed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phi1.errors import Phi1Error, require_package
from phi1.utils.io import temp_prefix, umask

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m")
NEEDS_LLAMA_QUANTIZE = {"q4_k_m": "Q4_K_M"}  # type -> llama-quantize's name for it


@dataclass
class ExportResult:
    path: Path
    type: str
    arch: str
    size_bytes: int
    n_tensors: int
    quantizer: str  # "gguf" (this package) or how llama.cpp's quantizer was reached
    notes: list[str] = field(default_factory=list)


def require_gguf():
    return require_package("gguf", "`phi1 export gguf`")


def llama_quantize_route() -> str | None:
    """How a type that `gguf` cannot quantize gets quantized here: a `llama-quantize` path, "llama_cpp", or None."""
    exe = shutil.which("llama-quantize")
    if exe:
        return exe
    from phi1.export.llamacpp import have_llama_cpp

    return "llama_cpp" if have_llama_cpp() else None


def check_type(qtype: str) -> str | None:
    """Validate --type before any work; returns the llama.cpp quantizer route for types that need one."""
    if qtype not in TYPES:
        raise Phi1Error(f"--type {qtype}: unknown; choose one of {', '.join(TYPES)}")
    if qtype not in NEEDS_LLAMA_QUANTIZE:
        return None
    route = llama_quantize_route()
    if route is None:
        raise Phi1Error(f"--type {qtype}: the gguf package has no {qtype} quantizer and llama.cpp's is not "
                        "available; put llama.cpp's `llama-quantize` on PATH (or pip install llama-cpp-python), "
                        "or choose one of f32, f16, bf16, q8_0, q4_0")
    return route


# ---------------------------------------------------------------- hyper-parameters


def _hparams(w, gg, cfg) -> None:
    """The keys every architecture has, then the family's own (`gg`: its GGUF mapping module)."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.rotary_dim)
    w.add_rope_freq_base(float(cfg.rope_theta))
    gg.hparams(w, cfg)


def _tokenizer(w, vocab) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        w.add_pad_token_id(vocab.pad_id)
    w.add_add_bos_token(False)  # phi models start with no BOS; the text's first token is the first token
    w.add_add_eos_token(False)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def _tensor_type(gguf, name: str, arr: np.ndarray, qtype: str):
    """The GGML type a tensor is stored in for an export of type `qtype`."""
    Q = gguf.GGMLQuantizationType
    if arr.ndim < 2 or qtype in ("f32", "q4_k_m"):  # q4_k_m: llama-quantize starts from f32
        return Q.F32
    if qtype == "f16":
        return Q.F16
    if qtype == "bf16":
        return Q.BF16
    block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
    if arr.shape[-1] % block:
        return Q.F16  # rows that do not split into 32-value blocks
    if qtype == "q4_0" and name != "output.weight":
        return Q.Q4_0
    return Q.Q8_0


OWNER_KEY = "phi1.exported_by"


def _write_error(exc: OSError, out: Path) -> OSError:
    """An OSError that names `out` and its cause. numpy's short write ("262144 requested and 168704
    written") carries no errno: on a disk with next to no room left it is ENOSPC."""
    import errno
    import shutil

    if exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), str(out))
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free >> 20} MiB free; {exc})", str(out))
    return OSError(errno.EIO, f"the write failed: {exc}", str(out))


def _temp_beside(out: Path) -> Path:
    """A new empty temp file beside `out`, named after this process (`.OUT.phi1-PID-*.tmp`)."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent)
    os.close(fd)
    return Path(name)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0", "q4_k_m": "ALL_F32"}


def _write(path: Path, gg, cfg, tensors: dict, vocab, qtype: str, name: str) -> int:
    gguf = require_gguf()
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs each file it opens at INFO
    w = gguf.GGUFWriter(str(path), gg.ARCH)
    w.add_name(name)
    w.add_string(OWNER_KEY, "phi1 export gguf")  # provenance (the ledger, phi1.utils.writes, proves ownership)
    w.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[qtype])))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hparams(w, gg, cfg)
    _tokenizer(w, vocab)
    Q = gguf.GGMLQuantizationType
    for tname, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        tt = _tensor_type(gguf, tname, arr, qtype)
        if tt == Q.F32:
            w.add_tensor(tname, arr)
        elif tt == Q.F16:
            w.add_tensor(tname, arr.astype(np.float16))
        else:
            w.add_tensor(tname, gguf.quants.quantize(arr, tt), raw_dtype=tt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tensors)


def _llama_quantize(route: str, src: Path, dst: Path, qtype: str) -> None:
    name = NEEDS_LLAMA_QUANTIZE[qtype]
    if route != "llama_cpp":
        r = subprocess.run([route, str(src), str(dst), name], capture_output=True, text=True)
        if r.returncode != 0 or not dst.is_file():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Phi1Error(f"{route} {name} failed (exit {r.returncode}): {tail[0]}")
        return
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    from phi1.export.llamacpp import captured_stderr

    with captured_stderr() as log:  # the C library logs each tensor: keep it for errors only
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    tail = [x for x in log if x.strip()][-1:] or ["no output"]
    if rc != 0 or not dst.is_file():
        raise Phi1Error(f"llama.cpp's quantizer (llama_cpp.llama_model_quantize) failed for {name} "
                        f"(code {rc}): {tail[0]}")


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, qtype: str = "f16",
                overwrite: bool = False) -> ExportResult:
    """Write `model_dir` as a GGUF file of type `qtype` at `out` (atomically: nothing is left on failure).
    An existing `out` is replaced only when an earlier export wrote it, or with `overwrite`; never
    when it is, or lies inside, the model directory (phi1.utils.writes). One export per output at a
    time (OutputLock); a killed export's temps are removed by the next one."""
    from phi1.utils.safety import OutputLock
    from phi1.utils.writes import Write, WritePlan

    route = check_type(qtype)
    require_gguf()
    model_dir, out = Path(model_dir), Path(out)
    if out.is_dir():
        raise Phi1Error(f"--out {out}: is a directory; give the .gguf file to write")
    if not out.parent.is_dir():
        raise Phi1Error(f"--out {out}: directory {out.parent} does not exist")
    plan = WritePlan("export gguf", [Write("--out", out)], inputs={"--model": model_dir}, overwrite=overwrite)
    with plan:
        cfg, gg, vocab = _checked_source(model_dir)  # the architecture and the tokenizer, before any weight
        with OutputLock(out, is_dir=False, what="GGUF output"):  # also removes dead exports' temps
            return _export_locked(model_dir, out, qtype, route, cfg, gg, vocab)


def _checked_source(model_dir: Path):
    from phi1.export.vocab import vocab_from_tokenizer
    from phi1.model.family import family_of
    from phi1.model.hf import read_config
    from phi1.tokenizer import load_tokenizer

    cfg = read_config(model_dir)
    gg = family_of(cfg).gguf()
    if gg is None:
        raise Phi1Error(f"{model_dir}: model family {family_of(cfg).name!r} has no GGUF mapping")
    gg.check(cfg)
    tok = load_tokenizer(model_dir)
    return cfg, gg, vocab_from_tokenizer(tok, cfg.vocab_size, model_dir)


def _export_locked(model_dir: Path, out: Path, qtype: str, route, cfg, gg, vocab) -> ExportResult:
    import torch

    from phi1.model.hf import load_model_dir
    from phi1.utils.io import note_written

    model = load_model_dir(model_dir, dtype=torch.float32)
    with torch.no_grad():
        sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    del model
    tensors, notes = gg.tensors(sd, cfg)
    if vocab.chat_template is None:
        notes.append("no chat template (a base model): tokenizer.chat_template not written")

    # Both temps carry this process's pid (.OUT.phi1-PID-*.tmp): a killed export's are removed by the
    # next export of the same output (OutputLock), whatever point it was killed at.
    tmp = _temp_beside(out)
    stage = _temp_beside(out) if route else None
    try:
        try:
            n = _write(stage or tmp, gg, cfg, tensors, vocab, qtype, model_dir.name)
            if route:
                _llama_quantize(route, stage, tmp, qtype)
        except OSError as exc:
            raise _write_error(exc, out) from None
        with open(tmp, "rb") as fh:  # mkstemp makes 0600; give the usual mode, and make it durable first
            os.fchmod(fh.fileno(), 0o644 & ~umask())
            os.fsync(fh.fileno())
        note_written(out, staged=tmp)  # the ledger knows the file before and after the rename
        os.replace(tmp, out)
        note_written(out)
    finally:
        for p in (tmp, stage):
            if p is not None and p.exists():
                p.unlink()
    return ExportResult(path=out, type=qtype, arch=gg.ARCH, size_bytes=out.stat().st_size, n_tensors=n,
                        quantizer="gguf" if not route else ("llama_cpp" if route == "llama_cpp" else "llama-quantize"),
                        notes=notes)
