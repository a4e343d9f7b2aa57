"""Encoder throughput for the quality classifier: documents/s and tokens/s of `--encoder hf:DIR`.

    python bench/encoder_throughput.py                    # CPU, a tiny random CodeGen (~4 min on 2 busy cores)
    python bench/encoder_throughput.py --size 350m        # codegen-350M-sized random weights (bf16 batch 64 on a GPU)

The corpus is this interpreter's standard library (.py files of every package, sorted by path, the first
--docs: long modules and short files, as in a real corpus). The
model is a random CodeGen built from `CodeGenConfig` (no download): `tiny` (4 layers, 256 wide) or
`350m` (20 layers, 1024 wide, 16 heads: CodeGen-350M-mono's shape). Side by side in one run:

- phi1: `phi1.data.features.HFEncoder` (documents sorted by length, so a batch pads little);
- the reference: the plain transformers loop a user would write (tokenizer padding to the batch's
  longest, batches in corpus order, the same mean pooling and max length).

Both compute the same embeddings (checked: the largest difference is printed). Reports documents/s,
real tokens/s, and the ratio; with `--size 350m` on a GPU also the GPU-hours to embed 35B tokens (the
paper's corpus) at the measured rate. Absolute times count only on a GPU; on CPU read the ratio.
Writes a JSON result (default bench/results/encoder_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"tiny": dict(n_embd=256, n_layer=4, n_head=8, rotary_dim=16),
         "350m": dict(n_embd=1024, n_layer=20, n_head=16, rotary_dim=32)}
TOKENS_35B = 35e9


def build_model(root: Path, size: str, max_tokens: int) -> Path:
    import torch
    from transformers import CodeGenConfig, CodeGenForCausalLM

    from phi1.tokenizer import train_tokenizer

    std = Path(sysconfig.get_paths()["stdlib"])
    tok = root / "tok"
    train_tokenizer([std / "json", std / "email"], vocab_size=4096, out_dir=tok)
    torch.manual_seed(0)
    cfg = CodeGenConfig(vocab_size=4096, n_positions=max(2048, max_tokens), n_ctx=max(2048, max_tokens),
                        bos_token_id=0, eos_token_id=0, **SIZES[size])
    out = root / f"codegen-{size}"
    CodeGenForCausalLM(cfg).save_pretrained(out)
    for f in tok.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def reference_encode(model, tok, texts, batch_size, max_tokens, device):
    """The loop from the transformers docs: pad each batch to its longest, mean-pool over the mask."""
    import torch

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.convert_ids_to_tokens(0)
    tok.padding_side = "right"
    out, tokens = [], 0
    for s in range(0, len(texts), batch_size):
        b = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        b = {k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            h = model(**b).last_hidden_state.float()
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy())
        tokens += int(b["attention_mask"].sum())
    return np.concatenate(out), tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--docs", type=int, default=400, help="stdlib files to embed")
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 64 on a GPU")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per side (best kept)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "encoder_throughput.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    from phi1.data.features import EncoderOptions, HFEncoder, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    batch = args.batch_size or (64 if device.startswith("cuda") else 16)
    std = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(std.rglob("*.py")) if "site-packages" not in p.parts][: args.docs]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    with tempfile.TemporaryDirectory() as tmp:
        mdir = build_model(Path(tmp), args.size, args.max_tokens)
        ours = HFEncoder(str(mdir), EncoderOptions(device=device, dtype=dtype, batch_size=batch,
                                                   max_tokens=args.max_tokens))
        ref_tok = AutoTokenizer.from_pretrained(mdir)
        ref_model = AutoModel.from_pretrained(mdir, dtype=getattr(torch, dtype)).to(device).eval()
        ours.encode(texts[:batch])  # warm-up (allocator, kernels)
        reference_encode(ref_model, ref_tok, texts[:batch], batch, args.max_tokens, device)
        t_ours, t_ref = [], []
        for _ in range(args.rounds):
            tokens_before = ours.tokens
            t0 = time.perf_counter()
            X = ours.encode(texts)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t_ours.append(time.perf_counter() - t0)
            n_tokens = ours.tokens - tokens_before
            t0 = time.perf_counter()
            R, ref_tokens = reference_encode(ref_model, ref_tok, texts, batch, args.max_tokens, device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t_ref.append(time.perf_counter() - t0)
    # An empty file is one padding token for phi1 (a defined vector) and no token for the loop (zeros):
    # compare the rest.
    real = np.array([bool(t.strip()) for t in texts])
    diff = float(np.abs(X[real] - R[real]).max())
    best_o, best_r = min(t_ours), min(t_ref)
    res = {"size": args.size, "device": device, "dtype": dtype, "batch_size": batch, "max_tokens": args.max_tokens,
           "documents": len(texts), "tokens": n_tokens, "reference_tokens": ref_tokens,
           "phi1": {"seconds": round(best_o, 3), "docs_per_s": round(len(texts) / best_o, 1),
                    "tokens_per_s": round(n_tokens / best_o, 1)},
           "reference": {"seconds": round(best_r, 3), "docs_per_s": round(len(texts) / best_r, 1),
                         "tokens_per_s": round(ref_tokens / best_r, 1)},
           "speedup": round(best_r / best_o, 2), "max_abs_diff": diff, "empty_documents": int((~real).sum()),
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}}
    if device.startswith("cuda"):
        res["gpu_hours_35b_tokens"] = round(TOKENS_35B / (n_tokens / best_o) / 3600, 1)
    print(f"encoder throughput: CodeGen-{args.size} random weights, {device} {dtype}, batch {batch}, "
          f"max {args.max_tokens} tokens, {len(texts)} stdlib files ({n_tokens} tokens)")
    print("| side | s | docs/s | tokens/s |\n|---|---|---|---|")
    for side in ("phi1", "reference"):
        r = res[side]
        print(f"| {side} | {r['seconds']} | {r['docs_per_s']} | {r['tokens_per_s']} |")
    print(f"speed-up (reference time / phi1 time): {res['speedup']}x; largest embedding difference {diff:.2e} "
          f"(over the {int(real.sum())} non-empty files)")
    if "gpu_hours_35b_tokens" in res:
        print(f"GPU-hours to embed 35B tokens at this rate: {res['gpu_hours_35b_tokens']}")
    else:
        print("no GPU: the GPU figure (codegen-350M-sized, bf16, batch 64) needs `--size 350m` on a CUDA machine")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
